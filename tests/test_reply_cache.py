"""Reply skeletons: every corpus mail's reply is the same, byte for byte, with the cache and without it."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.classify.envelope import assumed_envelope
from services.config import PROJECT_ROOT
from services.mail import parse_mail
from services.reply.build import build_reply, tracked_links
from services.reply.decide import decide
from services.reply.policy import PolicyConfig
from services.reply.render import ReplyRenderer
from services.ruleset.loader import load_rules

RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates", with_model=False)
SETTINGS = RULESET.settings
TEMPLATES = sorted(RULESET.templates)
KEY = b"test-link-key"
# a Monday morning before Christmas: the mails' clocks walk over office hours, nights, a weekend and holidays
START = datetime(2026, 12, 21, 6, 0, tzinfo=UTC)
_SKIP = re.compile(r"(LICENSE|COPYING|SOURCE_COMMIT|README|INDEX|GUIDE)|\.(ref|md|rst|json|csv|py|npz)$")
# the two values compose_reply makes per call (not per mail): the send time and the MIME boundary
_PER_CALL = re.compile(rb"^Date: [^\r\n]*|=_[0-9a-f]{32}", re.MULTILINE)


def _mail_files(corpus: Path) -> list[Path]:
    folders = [
        PROJECT_ROOT / "routing_rules" / "tests",
        PROJECT_ROOT / "routing_rules" / "examples",
        *sorted(p for p in (PROJECT_ROOT / "tests" / "data").iterdir() if p.is_dir()),
        corpus,
    ]
    return [p for f in folders for p in sorted(f.rglob("*")) if p.is_file() and not _SKIP.search(p.name)]


def test_every_corpus_reply_is_byte_identical_with_the_cache(corpus_dir: Path) -> None:
    cached = RULESET.renderer  # the rule set's renderer, as the worker uses it
    assert cached is not None
    uncached = ReplyRenderer(PROJECT_ROOT / "templates")  # auto-reload: no skeletons, today's Jinja path
    files = _mail_files(corpus_dir)
    assert len(files) > 4000
    replies = 0
    for number, path in enumerate(files):
        raw = path.read_bytes()
        mail = parse_mail(raw)
        received_at = START + timedelta(minutes=47 * number)  # ~ three months, every hour of the week
        verdict = decide(mail, assumed_envelope(RULESET, mail, None, None, received_at), RULESET, PolicyConfig(), KEY)
        # mails the rules answer with no reply still get one here, from each template in turn
        template = verdict.template if verdict.reply and verdict.template else TEMPLATES[number % len(TEMPLATES)]
        message_id = hashlib.sha256(raw).hexdigest()[:32]
        links = tracked_links(SETTINGS, "https://jobcenter.example", KEY, message_id) if number % 3 else None
        built = [
            build_reply(
                renderer,
                SETTINGS,
                template=template,
                language=verdict.language,
                received_at=received_at,
                message_id=message_id,
                from_address="info@jobcenter-musterstadt.example",
                to_address="citizen@example.org",
                reply_message_id=f"<reply.{message_id}@channelshift.local>",
                in_reply_to=verdict.in_reply_to,
                references=verdict.references,
                links=links,
            ).as_bytes()
            for renderer in (cached, uncached)
        ]
        # subject, text and HTML as sent (quoted-printable), headers included; only Date and boundary set aside
        assert _PER_CALL.sub(b"", built[0]) == _PER_CALL.sub(b"", built[1]), path
        replies += 1
    assert replies == len(files)
    # not vacuous: every skeleton was usable and most replies came from one (a mail every 47 minutes meets a
    # new office-hours state every few mails; in a worker's steady traffic nearly all are filled)
    assert cached.cache_hits >= 0.6 * replies, cached.cache_hits
    assert cached.cache_refusals == 0


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{{ reference | upper }}", "a filter"),
        ("{% if received_time < '12:00' %}morning{% endif %}", "a comparison"),
        ("{{ reference[:4] }}", "a slice"),
        ("{{ received_date | length }}", "its length"),
    ],
)
def test_a_template_that_does_more_with_a_mail_value_than_print_it_is_never_cached(
    tmp_path: Path, line: str, why: str
) -> None:
    templates = tmp_path / "templates"
    (templates / "replies" / "probe").mkdir(parents=True)
    for name in ("_base.html.j2", "_page.html.j2"):
        (templates / "replies" / name).write_bytes((PROJECT_ROOT / "templates" / "replies" / name).read_bytes())
    (templates / "replies" / "probe" / "de.txt.j2").write_text(f"Ihre Nachricht {{{{ reference }}}}: {line}\n")
    renderer = ReplyRenderer(templates, auto_reload=False)
    moments = [START + timedelta(hours=hour) for hour in (0, 5)]  # 07:00 and 12:00 in Berlin
    references = ["aaaa1111bbbb", "cccc2222dddd"]
    for moment, reference in zip(moments, references, strict=True):
        cached = renderer.render("probe", "de", SETTINGS, moment, reference=reference)
        direct = ReplyRenderer(templates).render("probe", "de", SETTINGS, moment, reference=reference)
        assert cached == direct, why
    assert renderer.cache_hits == 0 and renderer.cache_refusals == 2, why
