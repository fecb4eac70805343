"""Reply rendering with skeletons against Jinja per mail: the rule set's renderer, cache on and off, one run.

Per reply, on one core (process time): `ReplyRenderer.render` and the whole `build_reply` (render + MIME), for
a German reply and a Ukrainian one (Ukrainian + German), every mail with its own reference, link tokens and
arrival minute. The baseline is the same renderer with its skeletons switched off, measured alternately.

.venv/bin/python bench/bench_reply.py [--mails 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.reply.build import build_reply, tracked_links  # noqa: E402
from services.reply.render import ReplyRenderer  # noqa: E402
from services.ruleset.loader import load_rules  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
START = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
KEY = b"bench-link-key"


def _per_mail(function: Callable[[int], object], mails: int) -> float:
    start = time.process_time()
    for number in range(mails):
        function(number)
    return (time.process_time() - start) / mails


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ruleset = load_rules(ROOT / "routing_rules", ROOT / "templates", with_model=False)
    settings = ruleset.settings
    cached = ruleset.renderer
    assert cached is not None
    jinja = ReplyRenderer(ROOT / "templates", auto_reload=False)
    jinja._skeletons = None  # the same renderer with the cache switched off: Jinja for every reply
    ids = [hashlib.sha256(str(n).encode()).hexdigest()[:32] for n in range(args.mails)]
    links = [tracked_links(settings, "https://jobcenter.example", KEY, message_id) for message_id in ids]
    # a mail every 20 seconds: the minutes and office-hours states move on as in a day's traffic
    moments = [START + timedelta(seconds=20 * n) for n in range(args.mails)]

    def render(renderer: ReplyRenderer, language: str) -> Callable[[int], object]:
        return lambda n: renderer.render(
            "general", language, settings, moments[n], reference=ids[n][:12], links=links[n]
        )

    def build(renderer: ReplyRenderer, language: str) -> Callable[[int], object]:
        return lambda n: build_reply(
            renderer,
            settings,
            template="general",
            language=language,
            received_at=moments[n],
            message_id=ids[n],
            from_address="info@jobcenter-musterstadt.example",
            to_address="citizen@example.org",
            reply_message_id=f"<reply.{ids[n]}@channelshift.local>",
            in_reply_to=None,
            references=None,
            links=links[n],
        ).as_bytes()

    figures: dict[str, Any] = {}
    for what, make in (("render", render), ("build_reply", build)):
        for language in ("de", "uk"):
            samples: dict[str, list[float]] = {"jinja": [], "cached": []}
            for _ in range(args.rounds):
                for name, renderer in (("jinja", jinja), ("cached", cached)):
                    make(renderer, language)(0)  # compiled templates, first skeleton
                    samples[name].append(_per_mail(make(renderer, language), args.mails))
            jinja_s, cached_s = (statistics.median(samples[name]) for name in ("jinja", "cached"))
            figures[f"{what}/{language}"] = {
                "jinja_us": jinja_s * 1e6,
                "cached_us": cached_s * 1e6,
                "ratio": jinja_s / cached_s,
                "rounds": samples,
            }
            print(
                f"{what:<12} {language}: Jinja {jinja_s * 1e6:8.1f} µs, skeleton {cached_s * 1e6:8.1f} µs,"
                f" {jinja_s / cached_s:5.1f}x",
                flush=True,
            )
    results = {
        "machine": platform.node(),
        "python": platform.python_version(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mails": args.mails,
        "skeletons": len(cached._skeletons or {}),
        **figures,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "reply.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
