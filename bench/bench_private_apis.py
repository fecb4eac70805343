"""What each override of a private API buys, against the public path in the same run (issue 21).

- SMTP addresses: aiosmtpd's own `SMTP._getaddr` vs the quick path (services/gateway/addresses.py), per MAIL/RCPT.
- Reply headers: stock compat32 vs the quick fold through the public `fold`/`fold_binary` (services/reply/compose.py)
  vs the former override of compat32's private `_fold`, per composed and flattened reply.

.venv/bin/python bench/bench_private_apis.py [--corpus /work/shared/corpus] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.policy import Compat32, compat32
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import ROOT, save

from services.gateway.addresses import with_quick_addresses
from services.mail import parse_mail
from services.reply import compose
from services.reply.compose import _PLAIN_VALUE, compose_reply, threading_headers
from services.reply.render import ReplyRenderer
from services.ruleset.loader import load_rules

RECEIVED = datetime(2026, 3, 16, 7, 42, tzinfo=UTC)


def best_of(rounds: int, run: Callable[[], None], count: int) -> float:
    """Seconds of CPU per item: the best of `rounds` runs of `count` items (the least disturbed by neighbours)."""
    times = []
    for _ in range(rounds):
        start = time.process_time()
        run()
        times.append((time.process_time() - start) / count)
    return min(times)


def addresses(rounds: int) -> dict[str, Any]:
    from aiosmtpd.smtp import SMTP

    quick = with_quick_addresses(SMTP)
    assert quick is not SMTP, "the installed aiosmtpd does not get the quick path"
    session = SimpleNamespace(local_part_limit=0)
    # one MAIL and one RCPT as Postfix sends them
    args = ["<buerger.name@example.org> SIZE=3512 BODY=8BITMIME", "<info@jobcenter-musterstadt.example>"] * 5000

    def run(method: Any) -> Callable[[], None]:
        return lambda: [method(session, arg) for arg in args] and None

    upstream = best_of(rounds, run(SMTP._getaddr), len(args))
    ours = best_of(rounds, run(quick._getaddr), len(args))
    return {"upstream_us_per_call": upstream * 1e6, "quick_us_per_call": ours * 1e6, "ratio": upstream / ours}


class PrivateFold(Compat32):
    """The former override of compat32's private `_fold` (before issue 21), kept here only as a comparison."""

    def _fold(self, name: str, value: object, sanitize: bool) -> str:
        short = isinstance(value, str) and len(name) + 2 + len(value) <= (self.max_line_length or 78)
        if short and _PLAIN_VALUE.fullmatch(str(value)):
            return f"{name}: {value}{self.linesep}"
        return str(super()._fold(name, value, sanitize))  # type: ignore[misc]


def replies(rounds: int, corpus: Path) -> dict[str, Any]:
    renderer = ReplyRenderer(ROOT / "templates")
    ruleset = load_rules(ROOT / "routing_rules", ROOT / "templates", with_model=False)
    mails = [parse_mail(path.read_bytes()) for path in sorted((corpus / "citizen-mails").rglob("*.eml"))]
    templates = sorted({c.reply for c in ruleset.settings.categories.values() if c.reply})
    cases = []
    for index, mail in enumerate(mails):
        rendered = renderer.render(templates[index % len(templates)], "de", ruleset.settings, RECEIVED, reference="r")
        cases.append((rendered, *threading_headers(mail)))
    policies = {
        "stock_compat32": compat32.clone(linesep="\r\n"),
        "quick_public_fold": compose.REPLY_POLICY,
        "quick_private_fold": PrivateFold(linesep="\r\n"),
    }
    results: dict[str, float] = {}
    for name, policy in policies.items():

        def run() -> None:
            for rendered, in_reply_to, references in cases:
                compose_reply(
                    rendered,
                    in_reply_to=in_reply_to,
                    references=references,
                    from_name="Jobcenter Musterstadt",
                    from_address="info@jobcenter-musterstadt.example",
                    to_address="buerger@example.org",
                    reply_message_id="<reply.x@gateway.test>",
                ).as_bytes()

        compose.REPLY_POLICY = policy  # type: ignore[assignment]
        try:
            results[name] = best_of(rounds, run, len(cases)) * 1e6
        finally:
            compose.REPLY_POLICY = policies["quick_public_fold"]  # type: ignore[assignment]
    return {
        "mails": len(cases),
        "us_per_reply": results,
        "ratio_public": results["stock_compat32"] / results["quick_public_fold"],
        "ratio_private": results["stock_compat32"] / results["quick_private_fold"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--corpus", type=Path, default=Path(os.environ.get("CHANNELSHIFT_CORPUS_DIR", "../shared/corpus"))
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["addresses", "replies"])
    args = parser.parse_args()
    payload: dict[str, Any] = {}
    if args.only in (None, "addresses"):
        payload["addresses"] = addresses(args.rounds)
        print("addresses", payload["addresses"], flush=True)
    if args.only in (None, "replies"):
        payload["replies"] = replies(args.rounds, args.corpus)
        print("replies", payload["replies"], flush=True)
    if args.only is None:
        print(save("private_apis", payload))


if __name__ == "__main__":
    main()
