"""The `channelshift` command: serve, gateway, worker, web, inject, rules, replay, demo-traffic, purge, rollup, db."""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from services.config import Settings, split_host_port
from services.logging import configure_logging

if TYPE_CHECKING:
    from services.classify.engine import RuleSet


def _settings() -> Settings:
    return Settings()


def _ruleset(
    settings: Settings, rules_dir: str | None = None, *, with_model: bool = True, templates_dir: Path | None = None
) -> RuleSet:
    """The rule set a command works on: `rules_dir` or the configured one, with the configured examples."""
    from services.ruleset.loader import load_rules

    return load_rules(
        Path(rules_dir) if rules_dir else settings.rules_dir,
        templates_dir or settings.templates_dir,
        cache_dir=settings.effective_model_cache_dir,
        with_model=with_model,
        examples_dir=settings.examples_dir,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from services.runtime import serve

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    serve(settings)
    return 0


def _single(args: argparse.Namespace, *, gateway: bool = False, worker: bool = False, web_app: bool = False) -> int:
    from services.runtime import serve

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    if not settings.redis_url:
        print(
            "error: separate gateway/worker/web processes share one Redis: set CHANNELSHIFT_REDIS_URL "
            "(or use `channelshift serve` for the embedded all-in-one)",
            file=sys.stderr,
        )
        return 2
    serve(settings, gateway=gateway, worker=worker, web_app=web_app, migrate=False)
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    from services.mail import parse_mail

    settings = _settings()
    raw = Path(args.file).read_bytes()
    host, port = split_host_port(args.server or settings.smtp_listen)
    mail = parse_mail(raw)
    # without --to, every To/Cc address is offered and the gateway, which knows the served mailboxes, picks:
    # inject needs no rule set, so it works while a rule file is broken
    recipients = args.to or list(dict.fromkeys((*mail.to_addresses, *mail.cc_addresses)))
    if not recipients:
        print("no recipient: the mail has no To/Cc address; give one with --to", file=sys.stderr)
        return 1
    sender = args.sender if args.sender is not None else mail.from_address
    try:
        with smtplib.SMTP(host, port, timeout=30) as client:
            refused = client.sendmail(sender, recipients, raw)
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        print(f"refused: {exc.smtp_code} {error}", file=sys.stderr)
        return 1
    except smtplib.SMTPRecipientsRefused as exc:
        print(f"all recipients refused: {len(exc.recipients)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach gateway at {host}:{port}: {exc}", file=sys.stderr)
        return 1
    print(f"accepted for {len(recipients) - len(refused)} recipient(s)")
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    from services.ruleset.loader import RuleSetInvalid

    settings = _settings()
    directory = Path(args.dir) if args.dir else settings.rules_dir
    templates = Path(args.templates) if args.templates else settings.templates_dir
    try:
        ruleset = _ruleset(settings, str(directory), templates_dir=templates)
    except RuleSetInvalid as exc:
        if args.json:
            print(json.dumps({"ok": False, "errors": [e.__dict__ for e in exc.errors]}, ensure_ascii=False))
        else:
            for error in exc.errors:
                print(error)
            print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    warnings = list(ruleset.warnings)
    if args.json:
        summary = {"ok": True, "version": ruleset.version, "rules": len(ruleset.rules), "errors": []}
        print(json.dumps({**summary, "warnings": warnings}, ensure_ascii=False))
    else:
        for warning in warnings:
            print(f"warning: {warning}")
        suffix = f", {len(warnings)} warning(s)" if warnings else ""
        print(f"ok: {len(ruleset.rules)} rules, version {ruleset.version}{suffix}")
    return 0


def cmd_rules_history(args: argparse.Namespace) -> int:
    """Rule sets that became active, newest first; with --diff, one version's text diff against its predecessor."""
    from services.filediff import summarise
    from services.store.db import make_engine
    from services.store.rulesets import RuleSetStore, diff_against_previous

    settings = _settings()
    engine = make_engine(settings.effective_database_url)
    try:
        store = RuleSetStore(engine)
        if args.diff:
            info = store.version(args.diff)
            if info is None:
                print(f"no recorded rule-set version {args.diff!r} (`channelshift rules history` lists them)")
                return 1
            sys.stdout.write(diff_against_previous(store, info))
            return 0
        versions = store.versions(args.limit)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([v.as_dict() for v in versions], ensure_ascii=False, indent=2))
        return 0
    if not versions:
        print("no rule set recorded yet: a service records the set it activates (serve, gateway, worker, web)")
        return 0
    for info in versions:
        warnings = f", {len(info.warnings)} warning(s)" if info.warnings else ""
        print(f"{info.version}  {info.activated_at:%Y-%m-%d %H:%M:%S} UTC  by {info.activated_by}{warnings}")
        print(f"    changed: {summarise(info.changed)}")
    return 0


def cmd_rules_explain(args: argparse.Namespace) -> int:
    from services.reply.policy import policy_config
    from services.tools.explain import explain, format_explain

    settings = _settings()
    ruleset = _ruleset(settings, args.rules)
    result = explain(
        ruleset,
        Path(args.file).read_bytes(),
        mail_from=args.sender,
        rcpt_to=args.to,
        policy=policy_config(settings, warn=False),  # the worker's policy, so explain cannot disagree
    )
    print(json.dumps(result, ensure_ascii=False, indent=2) if args.json else format_explain(result))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """The worker's verdict for a mail file and the exact reply it would send; sends and stores nothing."""
    from zoneinfo import ZoneInfo

    from services.reply.policy import policy_config
    from services.reply.render import ReplyRenderer
    from services.tools.preview import format_preview, preview

    settings = _settings()
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    ruleset = _ruleset(settings, args.rules)
    zone = ruleset.settings.timezone
    received_at = datetime.now(UTC)
    if args.at:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            print(f"--at: not an ISO time: {args.at!r} (use 2026-12-01T19:30, local time in {zone})", file=sys.stderr)
            return 1
        received_at = at if at.tzinfo else at.replace(tzinfo=ZoneInfo(zone))
    result = preview(
        ruleset,
        ruleset.renderer or ReplyRenderer(settings.templates_dir),
        raw,
        received_at=received_at,
        hostname=settings.hostname,
        mail_from=args.sender,
        rcpt_to=args.to,
        policy=policy_config(settings, warn=False),
        public_url=settings.public_url if settings.track_clicks else None,
    )
    print(format_preview(result, zone, html=args.html, raw=args.raw))
    return 1 if result.reply_error else 0


def _add_preview(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    preview_parser = sub.add_parser(
        "preview", help="the verdict and the exact reply a mail would get (headers, all parts); sends nothing"
    )
    preview_parser.add_argument("file")
    preview_parser.add_argument("--at", help="ISO time the mail arrives (local unless it has an offset); default now")
    preview_parser.add_argument("--html", action="store_true", help="show the HTML part too")
    preview_parser.add_argument("--raw", action="store_true", help="the reply's bytes exactly as sent")
    preview_parser.add_argument("--rules", help="rule directory (default CHANNELSHIFT_RULES_DIR)")
    preview_parser.add_argument("--from", dest="sender", help="envelope sender (default: From header)")
    preview_parser.add_argument("--to", action="append", help="envelope recipient (default: served To/Cc)")
    preview_parser.set_defaults(func=cmd_preview)


def cmd_rules_eval(args: argparse.Namespace) -> int:
    from services.tools.evaluate import evaluate

    settings = _settings()
    ruleset = _ruleset(settings, args.rules)
    report = evaluate(ruleset, Path(args.dir), Path(args.labels) if args.labels else None)
    print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2) if args.json else report.format())
    if args.min_accuracy is not None and report.accuracy < args.min_accuracy:
        print(f"accuracy {report.accuracy:.1%} below --min-accuracy {args.min_accuracy:.1%}", file=sys.stderr)
        return 1
    if args.no_missed_safety and report.missed_safety():
        print("missed emergency/objection mails", file=sys.stderr)
        return 1
    return 0


def cmd_examples_add(args: argparse.Namespace) -> int:
    from services.classify.examples import RULE_ONLY_CATEGORIES, ExampleRefused, add_example

    settings = _settings()
    rules_dir = Path(args.rules) if args.rules else settings.rules_dir
    ruleset = _ruleset(settings, str(rules_dir), with_model=False)
    try:
        raw = Path(args.file).read_bytes()
        name = add_example(
            settings.examples_dir or rules_dir / ruleset.settings.model.examples,
            raw,
            args.category,
            set(ruleset.settings.categories) | RULE_ONLY_CATEGORIES,
            language=args.language or "",
            notes=args.notes or "",
        )
    except ExampleRefused as exc:
        print(f"not added: {exc}", file=sys.stderr)
        return 1
    print(f"added {name} as {args.category}; the model retrains when the rule set reloads (rules check shows it)")
    return 0


def _date(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date: {value!r} (use 2026-03-01 or 2026-03-01T08:00)") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cmd_replay(args: argparse.Namespace) -> int:
    from services.ruleset.loader import RuleSetInvalid
    from services.store.db import make_engine
    from services.tools.replay import replay

    settings = _settings()
    try:
        ruleset = _ruleset(settings, args.rules)
    except RuleSetInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    engine = make_engine(settings.effective_database_url)
    report = replay(engine, ruleset, args.since, args.until)
    engine.dispose()
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(report.format())
    return 0


def cmd_demo_traffic(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    settings = _settings()
    host, port = split_host_port(args.server or settings.smtp_listen)
    outbox = None if settings.relay_url else settings.outbox_dir
    cutover = _ruleset(settings, with_model=False).settings.cutover  # the dashboard compares around it
    try:
        result = run_demo(
            host=host,
            port=port,
            days=args.days,
            per_day=args.per_day,
            cutoff_day=args.cutoff_day,
            concurrency=args.concurrency,
            click_share=args.clicks,
            outbox=outbox,
            cutover=cutover,
        )
    except OSError as exc:
        print(f"cannot reach gateway at {host}:{port}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"sent {result['sent']} mails ({result['accepted']} accepted, {result['refused']} refused) "
            f"for {result['first_day']} .. today; cut-off {result['cutoff']}: "
            f"{result['per_day_before']}/day before, {result['per_day_after']}/day after; "
            f"{result['clicks']} reply links clicked (of {result['replies_with_link']} replies)"
        )
        print(
            "The gateway keeps these dates only with CHANNELSHIFT_DEMO_DATES=true (set by `make run`); "
            f"see the dashboard at http://{settings.web_listen}/dashboard"
        )
    return 0 if result["refused"] == 0 else 1


def cmd_purge(args: argparse.Namespace) -> int:
    from services.store.db import make_engine
    from services.store.purge import purge

    settings = _settings()
    days = args.days if args.days is not None else settings.retention_days
    engine = make_engine(settings.effective_database_url)
    result = purge(engine, days, dry_run=args.dry_run)
    engine.dispose()
    verb = "would purge" if args.dry_run else "purged"
    print(
        f"{verb} {result.messages} message bodies older than {days} days"
        + ("" if args.dry_run else f"; removed {result.ledger_rows} reply-ledger rows, {result.clicks} click rows")
    )
    return 0


def cmd_rollup(args: argparse.Namespace) -> int:
    from services.store.db import make_engine
    from services.store.rollup import refresh_daily_rollup

    settings = _settings()
    zone = _ruleset(settings, with_model=False).settings.timezone
    engine = make_engine(settings.effective_database_url)
    result = refresh_daily_rollup(engine, zone)
    engine.dispose()
    kind = "built" if result.full_build else "refreshed"
    print(f"daily rollup ({zone}): {kind} {result.days} days")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from services.store.migrate import downgrade, upgrade

    settings = _settings()
    if args.action == "upgrade":
        upgrade(settings.effective_database_url, args.revision or "head")
    else:
        downgrade(settings.effective_database_url, args.revision or "-1")
    print(f"database {args.action} done")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="channelshift",
        description="Inbound-mail gateway that steers citizens to better channels. "
        "Configuration comes from CHANNELSHIFT_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "serve",
        help="gateway + worker + web in one process on the embedded default (SQLite and redis-server under ./var)",
    ).set_defaults(func=cmd_serve)
    sub.add_parser("gateway", help="SMTP/LMTP gateway only (needs CHANNELSHIFT_REDIS_URL)").set_defaults(
        func=lambda a: _single(a, gateway=True)
    )
    sub.add_parser("worker", help="arq worker only (needs CHANNELSHIFT_REDIS_URL)").set_defaults(
        func=lambda a: _single(a, worker=True)
    )
    sub.add_parser("web", help="HTTP API only (needs CHANNELSHIFT_REDIS_URL)").set_defaults(
        func=lambda a: _single(a, web_app=True)
    )

    inject = sub.add_parser("inject", help="send an .eml file through the running gateway")
    inject.add_argument("file")
    inject.add_argument("--to", action="append", help="envelope recipient (repeatable); default: served To/Cc")
    inject.add_argument("--from", dest="sender", help="envelope sender; default: the From header")
    inject.add_argument("--server", help="HOST:PORT; default CHANNELSHIFT_SMTP_LISTEN")
    inject.set_defaults(func=cmd_inject)

    rules = sub.add_parser("rules", help="check, explain and evaluate rule files; their history")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate a rule directory; prints file:line: field: message")
    check.add_argument("dir", nargs="?", help="rule directory (default CHANNELSHIFT_RULES_DIR)")
    check.add_argument("--templates", help="templates directory (default CHANNELSHIFT_TEMPLATES_DIR)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=cmd_rules_check)
    history = rules_sub.add_parser(
        "history",
        help="rule sets that became active (version, first activation, changed files, warnings), newest first",
        description="Every rule set a service activated is recorded in the database once per version. "
        "With --diff VERSION: the unified diff of its rule and template files against the set active before it.",
    )
    history.add_argument("--diff", metavar="VERSION", help="show this version's diff against its predecessor")
    history.add_argument("--limit", type=int, default=50, help="how many versions to list (default 50)")
    history.add_argument("--json", action="store_true", help="machine-readable list")
    history.set_defaults(func=cmd_rules_history)
    explain = rules_sub.add_parser("explain", help="why a mail gets its category, with the full rule trace")
    explain.add_argument("file")
    explain.add_argument("--json", action="store_true", help="one JSON object")
    explain.add_argument("--rules", help="rule directory (default CHANNELSHIFT_RULES_DIR)")
    explain.add_argument("--from", dest="sender", help="envelope sender (default: From header)")
    explain.add_argument("--to", action="append", help="envelope recipient (default: served To/Cc)")
    explain.set_defaults(func=cmd_rules_explain)
    _add_preview(sub)
    evaluate = rules_sub.add_parser("eval", help="accuracy, precision/recall, confusion over DIR/labels.csv")
    evaluate.add_argument("dir")
    evaluate.add_argument("--labels", help="labels CSV (default DIR/labels.csv): file,category,...")
    evaluate.add_argument("--rules", help="rule directory (default CHANNELSHIFT_RULES_DIR)")
    evaluate.add_argument("--min-accuracy", type=float, help="exit 1 below this accuracy (0..1)")
    evaluate.add_argument("--no-missed-safety", action="store_true", help="exit 1 if an emergency/objection is missed")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_rules_eval)

    examples = sub.add_parser("examples", help="labelled example mails the intent model learns from")
    examples_sub = examples.add_subparsers(dest="examples_command", required=True)
    add = examples_sub.add_parser("add", help="copy a mail into the examples with its category (your own decision)")
    add.add_argument("file")
    add.add_argument("--category", required=True)
    add.add_argument("--language", help="ISO code of the mail's language (for the report by language)")
    add.add_argument("--notes", help="why this label (one line)")
    add.add_argument("--rules", help="rule directory (default CHANNELSHIFT_RULES_DIR)")
    add.set_defaults(func=cmd_examples_add)

    replay_parser = sub.add_parser(
        "replay", help="re-classify stored messages with a candidate rule set; shows the shift, sends nothing"
    )
    replay_parser.add_argument("--since", type=_date, required=True, help="ISO date/time (UTC unless given)")
    replay_parser.add_argument("--until", type=_date, help="ISO date/time, exclusive")
    replay_parser.add_argument("--rules", help="candidate rule directory (default CHANNELSHIFT_RULES_DIR)")
    replay_parser.add_argument("--json", action="store_true")
    replay_parser.set_defaults(func=cmd_replay)

    demo = sub.add_parser(
        "demo-traffic", help="send a synthetic mail stream (declining after a cut-off) through the running gateway"
    )
    demo.add_argument("--days", type=int, default=60)
    demo.add_argument("--per-day", type=int, default=60, help="mails per weekday before the cut-off")
    demo.add_argument("--cutoff-day", type=int, help="day index of the reachability change (default: middle)")
    demo.add_argument("--concurrency", type=int, default=8, help="parallel SMTP sessions")
    demo.add_argument("--clicks", type=float, default=0.3, help="share of reply links to open (maildir outbox)")
    demo.add_argument("--server", help="HOST:PORT; default CHANNELSHIFT_SMTP_LISTEN")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=cmd_demo_traffic)

    purge_parser = sub.add_parser(
        "purge", help="drop raw bodies and sender addresses of finished messages past retention (also a daily job)"
    )
    purge_parser.add_argument("--days", type=int, help="default CHANNELSHIFT_RETENTION_DAYS (30)")
    purge_parser.add_argument("--dry-run", action="store_true", help="only count")
    purge_parser.set_defaults(func=cmd_purge)

    rollup_parser = sub.add_parser(
        "rollup", help="bring the daily counter rollup up to date now (the worker does it every minute)"
    )
    rollup_parser.set_defaults(func=cmd_rollup)

    db = sub.add_parser("db", help="database migrations (Alembic)")
    db.add_argument("action", choices=["upgrade", "downgrade"])
    db.add_argument("revision", nargs="?", help="default: head for upgrade, -1 for downgrade")
    db.set_defaults(func=cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; expected failures are one clear line on stderr and exit 1, never a traceback."""
    from services.ruleset.loader import RuleSetInvalid

    parser = build_parser()
    args = parser.parse_args(argv)
    # every command logs to stderr (the roles reconfigure from their settings): stdout is the command's own
    # output, which `--json` callers parse; structlog's default would print e.g. `model.trained` there
    configure_logging(
        os.environ.get("CHANNELSHIFT_LOG_LEVEL", "INFO"), os.environ.get("CHANNELSHIFT_LOG_FORMAT", "auto")
    )
    try:
        result: int = args.func(args)
    except RuleSetInvalid as exc:
        print(
            f"the rule set does not validate ({len(exc.errors)} problems; `channelshift rules check`):", file=sys.stderr
        )
        for error in exc.errors[:20]:
            print(f"  {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"no such file: {exc.filename}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `channelshift rules explain mail.eml | head`: the reader left; stop quietly (the docs' recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        # a port already in use, a folder without permission: the system's words, without a traceback
        print(f"cannot {args.command}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    raise SystemExit(main())
