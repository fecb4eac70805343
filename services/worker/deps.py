"""What jobs need, built once at worker start-up: engine, batch writer, rules, renderer, senders."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine

from services.config import Settings
from services.reply.policy import PolicyConfig, policy_config
from services.reply.render import ReplyRenderer
from services.reply.send import Sender, make_sender
from services.ruleset.reload import RuleSetHolder
from services.store.batch import TransactionBatcher
from services.store.db import make_engine
from services.worker.claims import HeldClaims
from services.worker.verdicts import VerdictBatcher


@dataclass
class Deps:
    settings: Settings
    engine: Engine
    rules: RuleSetHolder
    renderer: ReplyRenderer
    reply_sender: Sender
    delivery_sender: Sender
    policy: PolicyConfig
    batcher: TransactionBatcher
    held: HeldClaims = field(default_factory=HeldClaims)  # renewed by the worker while its jobs send
    verdicts: VerdictBatcher = field(init=False)  # concurrent jobs' mails classified together
    # mails being processed at once (a process job carries several): worker_concurrency, as with a job per mail
    mail_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.verdicts = VerdictBatcher(
            lambda: self.rules.current,
            self.policy,
            self.settings.effective_pseudonym_key,
            lambda: self.settings.classify_timeout_seconds,
        )
        self.mail_slots = asyncio.Semaphore(self.settings.worker_concurrency)

    async def close(self) -> None:
        """Release what jobs hold between runs: relay connections and the batch writer."""
        await self.reply_sender.close()
        await self.delivery_sender.close()
        await self.batcher.close()
        await self.verdicts.close()

    @property
    def stale_sending(self) -> timedelta:
        """A send claimed longer ago than this is treated as cut off by a crash."""
        return timedelta(seconds=self.settings.stale_after_seconds)

    @classmethod
    def build(
        cls,
        settings: Settings,
        engine: Engine | None = None,
        rules: RuleSetHolder | None = None,
        *,
        with_model: bool = True,
    ) -> Deps:
        """`with_model=False` for processes that never classify (gateway, web): no intent model is trained."""
        engine = engine or make_engine(settings.effective_database_url, pool_size=settings.db_pool_size)
        return cls(
            settings=settings,
            engine=engine,
            rules=rules
            or RuleSetHolder(
                settings.rules_dir,
                settings.templates_dir,
                settings.effective_model_cache_dir,
                with_model=with_model,
                examples_dir=settings.examples_dir,
            ),
            renderer=ReplyRenderer(settings.templates_dir),
            reply_sender=make_sender(settings.relay_url, settings.outbox_dir, settings.effective_relay_pool_size),
            delivery_sender=make_sender(
                settings.delivery_url, settings.delivered_dir, settings.effective_relay_pool_size
            ),
            policy=policy_config(settings, warn=with_model),  # warned once, by the processes that decide
            batcher=TransactionBatcher(engine),
        )
