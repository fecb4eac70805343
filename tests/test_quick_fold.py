"""The reply policy's quick fold (public `fold`/`fold_binary` only) writes the bytes stock compat32 writes."""

from __future__ import annotations

from email.policy import Compat32, compat32
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from services.config import PROJECT_ROOT
from services.mail import parse_mail
from services.reply.compose import REPLY_POLICY, QuickFold, compose_reply, threading_headers
from services.reply.render import ReplyRenderer
from services.ruleset.loader import load_rules
from tests.test_replies import LANGUAGES, RECEIVED, TEMPLATES

RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates", with_model=False)
RENDERER = ReplyRenderer(PROJECT_ROOT / "templates")
STOCK = compat32.clone(linesep="\r\n")


def test_only_public_policy_methods_are_overridden() -> None:
    overridden = {name for name in vars(QuickFold) if callable(vars(QuickFold)[name]) and name in vars(Compat32)}
    assert overridden == {"fold", "fold_binary"}
    assert isinstance(REPLY_POLICY, QuickFold)


def test_every_corpus_mail_gets_the_reply_bytes_stock_compat32_writes(corpus_dir: Path) -> None:
    paths = [p for d in ("citizen-mails", "thirdparty") for p in sorted((corpus_dir / d).rglob("*.eml"))]
    assert len(paths) > 1000
    threaded = 0
    for index, path in enumerate(paths):
        inbound = parse_mail(path.read_bytes())
        in_reply_to, references = threading_headers(inbound)
        threaded += in_reply_to is not None
        template, language = TEMPLATES[index % len(TEMPLATES)], LANGUAGES[index % len(LANGUAGES)]
        rendered = RENDERER.render(template, language, RULESET.settings, RECEIVED, reference=path.stem)
        message = compose_reply(
            rendered,
            in_reply_to=in_reply_to,
            references=references,
            from_name="Jobcenter Musterstädt",
            from_address="info@jobcenter-musterstadt.example",
            to_address="buerger@example.org",
            reply_message_id=f"<reply.{index}@gateway.test>",
        )
        assert message.as_bytes() == message.as_bytes(policy=STOCK), path.name
        assert message.as_string() == message.as_string(policy=STOCK), path.name
    assert threaded > 500  # most corpus mails carry a Message-ID, so In-Reply-To and References are exercised


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"), max_size=120))
def test_quick_fold_binary_equals_compat32(value: str) -> None:
    for name in ("To", "In-Reply-To", "References", "X-Auto-Response-Suppress"):
        assert REPLY_POLICY.fold_binary(name, value) == STOCK.fold_binary(name, value)
