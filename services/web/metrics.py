"""GET /metrics: counters from the durable rollup, rule-set state, queue depth, and this process's latencies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from arq.connections import ArqRedis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from services import queue
from services.domain import REJECTED_PREFIX, REPEAT_PREFIX, SUPPRESSED_PREFIX, Outcome
from services.metrics import PROCESS_REGISTRY
from services.ruleset.reload import RuleSetHolder
from services.store import reports
from services.store.corrections import correction_pairs
from services.store.reports import counter_totals
from services.web.replylinks import unlinked_categories

CACHE_SECONDS = 10.0
COHORT_DAYS = 30
# the `state` label of channelshift_replies per counter outcome
_REPLY_STATES: dict[str, str] = {
    Outcome.REPLIED: "planned",
    Outcome.REPLY_SENT: "sent",
    Outcome.REPLY_FAILED: "failed",
    Outcome.REPLY_UNCERTAIN: "uncertain",
}


class RollupCollector(Collector):
    """Totals of the hourly counter table; the same numbers whichever process serves the scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cache: list[tuple[str, str, str, int]] = []
        self._cached_at = 0.0

    def refresh(self) -> None:
        if time.monotonic() - self._cached_at < CACHE_SECONDS:
            return
        self._cache = counter_totals(self.engine)
        self._cached_at = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        received = CounterMetricFamily(
            "channelshift_mail_received", "Mails decided, by category and channel.", labels=["category", "channel"]
        )
        replies = CounterMetricFamily(
            "channelshift_replies",
            "Steering replies by state (planned, sent, failed, uncertain).",
            labels=["category", "channel", "state"],
        )
        suppressed = CounterMetricFamily(
            "channelshift_replies_suppressed", "Replies not sent, by reason.", labels=["reason"]
        )
        held = CounterMetricFamily(
            "channelshift_mail_held", "Machine reports and list traffic handed to the postmaster target.", labels=[]
        )
        deliveries = CounterMetricFamily(
            "channelshift_deliveries", "Originals handed to staff, by state.", labels=["state"]
        )
        wrapped = CounterMetricFamily(
            "channelshift_deliveries_wrapped",
            "Originals the staff relay refused that reached staff inside a wrapper (also counted as delivered).",
            labels=[],
        )
        rejected = CounterMetricFamily(
            "channelshift_smtp_rejected", "Recipients refused at SMTP time, by reason.", labels=["reason"]
        )
        clicks = CounterMetricFamily("channelshift_clicks", "Clicks on reply links.", labels=["category", "channel"])
        unique = CounterMetricFamily(
            "channelshift_unique_clicks", "Reply links clicked at least once.", labels=["category", "channel"]
        )
        replies_clicked = CounterMetricFamily(
            "channelshift_replies_clicked",
            "Sent replies with at least one link opened, by the reply's category and channel.",
            labels=["category", "channel"],
        )
        links_opened = CounterMetricFamily(
            "channelshift_links_opened",
            "Reply links opened at least once, by the reply's category and the channel clicked.",
            labels=["category", "channel"],
        )
        repeat = CounterMetricFamily(
            "channelshift_repeat_senders",
            "Steering replies followed by another e-mail from the same sender.",
            labels=["window"],
        )
        sums: dict[tuple[str, ...], int] = {}

        def add(metric: str, *labels: str, value: int) -> None:
            sums[(metric, *labels)] = sums.get((metric, *labels), 0) + value

        for category, channel, outcome, count in self._cache:
            if outcome == Outcome.RECEIVED:
                add("received", category, channel, value=count)
            elif outcome in _REPLY_STATES:
                add("replies", category, channel, _REPLY_STATES[outcome], value=count)
            elif outcome.startswith(SUPPRESSED_PREFIX):
                add("suppressed", outcome.removeprefix(SUPPRESSED_PREFIX), value=count)
            elif outcome == Outcome.HELD:
                add("held", value=count)
            elif outcome in (Outcome.DELIVERED, Outcome.DELIVERY_FAILED):
                add("deliveries", "delivered" if outcome == Outcome.DELIVERED else "failed", value=count)
            elif outcome == Outcome.DELIVERED_WRAPPED:
                add("wrapped", value=count)
            elif outcome.startswith(REJECTED_PREFIX):
                add("rejected", outcome.removeprefix(REJECTED_PREFIX), value=count)
            elif outcome == Outcome.CLICK:
                add("clicks", category, channel, value=count)
            elif outcome == Outcome.CLICK_UNIQUE:
                add("unique", category, channel, value=count)
            elif outcome == Outcome.REPLY_CLICKED:
                add("replies_clicked", category, channel, value=count)
            elif outcome == Outcome.LINK_OPENED:
                add("links_opened", category, channel, value=count)
            elif outcome.startswith(REPEAT_PREFIX):
                add("repeat", outcome.removeprefix(REPEAT_PREFIX), value=count)
        families = {
            "received": received,
            "replies": replies,
            "suppressed": suppressed,
            "held": held,
            "deliveries": deliveries,
            "wrapped": wrapped,
            "rejected": rejected,
            "clicks": clicks,
            "unique": unique,
            "replies_clicked": replies_clicked,
            "links_opened": links_opened,
            "repeat": repeat,
        }
        for (metric, *labels), value in sorted(sums.items()):
            families[metric].add_metric(labels, value)
        yield from families.values()


class CohortCollector(Collector):
    """Click-through and repeat-sender rates of the last 30 days' replies, exactly as /api/v1/summary has them.

    Gauges, not counters: a cohort share cannot be derived from counter increases (a click is counted when it
    happens, its reply when it was sent), so Grafana reads the share the API computes.
    """

    def __init__(self, engine: Engine, rules: RuleSetHolder) -> None:
        self.engine = engine
        self.rules = rules
        self._summary: dict[str, Any] | None = None
        self._cached_at = 0.0

    def refresh(self) -> None:
        if self._summary is not None and time.monotonic() - self._cached_at < CACHE_SECONDS:
            return
        zone = ZoneInfo(self.rules.current.settings.timezone)
        today = datetime.now(zone).date()
        period = reports.Period(today - timedelta(days=COHORT_DAYS - 1), today, zone)
        unlinked = unlinked_categories(self.rules.current, self.rules.templates_dir)
        self._summary = reports.summary(self.engine, period, unlinked)
        self._cached_at = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        clicks = GaugeMetricFamily(
            "channelshift_click_through_ratio",
            f"Share of the replies to mails of the last {COHORT_DAYS} days with a link opened (docs/metrics.md).",
            labels=["by", "name"],
        )
        repeat = GaugeMetricFamily(
            "channelshift_repeat_rate_ratio",
            f"Share of the steering replies of the last {COHORT_DAYS} days followed by another e-mail.",
            labels=["window"],
        )
        summary = self._summary or {}
        if summary.get("click_through") is not None:
            clicks.add_metric(["all", "all"], summary["click_through"])
        for by in ("category", "channel"):
            for name, figures in summary.get(f"by_{by}", {}).items():
                if figures["click_through"] is not None:
                    clicks.add_metric([by, name], figures["click_through"])
        for window in ("7d", "30d"):
            if summary.get(f"repeat_rate_{window}") is not None:
                repeat.add_metric([window], summary[f"repeat_rate_{window}"])
        yield clicks
        yield repeat


class CorrectionsCollector(Collector):
    """Staff corrections of misrouted mail by (decided, corrected) category, from the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pairs: dict[tuple[str, str], int] = {}
        self._cached_at: float | None = None

    def refresh(self) -> None:
        if self._cached_at is not None and time.monotonic() - self._cached_at < CACHE_SECONDS:
            return
        self._pairs = correction_pairs(self.engine)
        self._cached_at = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        corrections = CounterMetricFamily(
            "channelshift_corrections",
            "Staff feedback naming another category than the one decided (docs/metrics.md).",
            labels=["from", "to"],
        )
        for (old, new), count in sorted(self._pairs.items()):
            corrections.add_metric([old, new], count)
        yield corrections


class RulesCollector(Collector):
    def __init__(self, rules: RuleSetHolder) -> None:
        self.rules = rules

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "channelshift_ruleset_info", "The running rule set (value is always 1).", labels=["version"]
        )
        info.add_metric([self.rules.current.version], 1)
        yield info
        valid = GaugeMetricFamily("channelshift_rules_valid", "1 if the rule files on disk validate, else 0.")
        valid.add_metric([], 0 if self.rules.errors else 1)
        yield valid
        failures = CounterMetricFamily(
            "channelshift_rules_reload_failures", "Rule reloads refused because the files did not validate."
        )
        failures.add_metric([], self.rules.reload_failures)
        yield failures
        count = GaugeMetricFamily("channelshift_rules", "Number of rules in the running set.")
        count.add_metric([], len(self.rules.current.rules))
        yield count


class QueueCollector(Collector):
    def __init__(self) -> None:
        self.depth: int | None = None

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("channelshift_queue_depth", "Jobs waiting in the arq queue (incl. deferred).")
        if self.depth is not None:
            depth.add_metric([], self.depth)
        yield depth


class MetricsEndpoint:
    def __init__(self, engine: Engine, rules: RuleSetHolder, redis: ArqRedis) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.rollup = RollupCollector(engine)
        self.cohort = CohortCollector(engine, rules)
        self.queue = QueueCollector()
        self.corrections = CorrectionsCollector(engine)
        self.redis = redis
        self.registry.register(self.rollup)
        self.registry.register(self.cohort)
        self.registry.register(RulesCollector(rules))
        self.registry.register(self.queue)
        self.registry.register(self.corrections)

    async def handle(self, _request: web.Request) -> web.Response:
        try:
            self.queue.depth = int(await asyncio.wait_for(self.redis.zcard(queue.QUEUE_NAME), timeout=2))
        except Exception:
            self.queue.depth = None
        await asyncio.to_thread(self.rollup.refresh)
        await asyncio.to_thread(self.cohort.refresh)
        await asyncio.to_thread(self.corrections.refresh)
        body = generate_latest(self.registry) + generate_latest(PROCESS_REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
