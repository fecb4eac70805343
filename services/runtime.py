"""Long-running processes: gateway, worker, web, and `serve` which runs all three on the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass

import structlog
import uvloop
from aiohttp import web
from arq.connections import ArqRedis
from sqlalchemy import Engine

from services import queue
from services.config import Settings, split_host_port
from services.embedded_redis import EmbeddedRedis, start_embedded_redis
from services.gateway.handler import GatewayHandler
from services.gateway.server import OpenSessions, listener_options, start_listener
from services.ruleset.reload import Fallback, RuleSetHolder
from services.store.db import make_engine
from services.store.migrate import upgrade
from services.store.rulesets import RuleSetStore
from services.web.app import create_app, create_health_app
from services.web.guard import refuse_open_bind
from services.worker.app import LeasedWorker, build_worker
from services.worker.deps import Deps

log = structlog.get_logger(__name__)


def ensure_redis(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """The configured Redis URL, or a freshly started embedded redis-server under var/redis."""
    if settings.redis_url:
        return settings.redis_url, None
    embedded = start_embedded_redis(settings.var_dir / "redis")
    log.info("redis.embedded_started")
    return embedded.url, embedded


async def _wait_for_signal() -> None:
    """Until SIGINT or SIGTERM; called again during a graceful stop, a second signal ends it at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@dataclass
class Gateway:
    servers: list[asyncio.Server]
    handlers: list[GatewayHandler]
    sessions: list[OpenSessions]

    async def stop(self, grace: float) -> None:
        """New sessions get 421 while open transactions finish (up to `grace` s); then the listeners close."""
        results = await asyncio.gather(*(sessions.close(grace) for sessions in self.sessions))
        for server in self.servers:
            server.close()
        for handler in self.handlers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(handler.drain(), timeout=5)
        log.info("gateway.stopped", dropped=sum(results))


async def start_gateway(settings: Settings, deps: Deps, pool: ArqRedis) -> Gateway:
    enqueue = queue.process_jobs_for(pool)
    servers = []
    handlers = []
    all_sessions = []
    for protocol, listen in (("smtp", settings.smtp_listen), ("lmtp", settings.lmtp_listen)):
        if not listen:
            continue
        handler = GatewayHandler(
            deps.engine,
            deps.rules,
            enqueue,
            protocol=protocol,
            max_message_size=settings.max_message_size,
            max_recipients=settings.max_recipients,
            demo_dates=settings.demo_dates,
        )
        sessions = OpenSessions()
        servers.append(await start_listener(handler, listen, open_sessions=sessions, **listener_options(settings)))
        handlers.append(handler)
        all_sessions.append(sessions)
        log.info("gateway.listening", protocol=protocol, listen=listen)
    return Gateway(servers, handlers, all_sessions)


async def start_web(settings: Settings, deps: Deps, pool: ArqRedis, *, health_only: bool = False) -> web.AppRunner:
    if health_only:
        app = create_health_app(deps.engine, pool, deps.rules)
    else:
        refuse_open_bind(settings)
        app = create_app(settings, deps.engine, pool, deps.rules)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listen = settings.health_listen if health_only and settings.health_listen else settings.web_listen
    host, port = split_host_port(listen)
    await web.TCPSite(runner, host, port).start()
    log.info("web.listening", listen=listen, health_only=health_only)
    return runner


def role_name(*, gateway: bool, worker: bool, web_app: bool) -> str:
    roles = [name for name, on in (("gateway", gateway), ("worker", worker), ("web", web_app)) if on]
    return "serve" if len(roles) == 3 else "+".join(roles)


def rule_holder(settings: Settings, engine: Engine, *, role: str, with_model: bool) -> RuleSetHolder:
    """The running rule set of a service process: recorded in the database, started on the last good set
    from there when the files do not validate, or on none (451 on RCPT, worker waiting) until they do."""
    return RuleSetHolder(
        settings.rules_dir,
        settings.templates_dir,
        settings.effective_model_cache_dir,
        with_model=with_model,
        examples_dir=settings.examples_dir,
        fallback=Fallback(RuleSetStore(engine), settings.var_dir / "rules-last-good", role),
    )


async def run(settings: Settings, *, gateway: bool, worker: bool, web_app: bool, redis_url: str) -> None:
    engine = make_engine(settings.effective_database_url, pool_size=settings.db_pool_size)
    role = role_name(gateway=gateway, worker=worker, web_app=web_app)
    rules = rule_holder(settings, engine, role=role, with_model=worker)
    deps = Deps.build(settings, engine=engine, rules=rules, with_model=worker)
    log.info("runtime.started", event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
    pool = await _connect_redis(redis_url)
    smtp: Gateway | None = None
    runner: web.AppRunner | None = None
    workers: WorkerLoop | None = None
    worker_task: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    try:
        if gateway:
            smtp = await start_gateway(settings, deps, pool)
        if web_app:
            runner = await start_web(settings, deps, pool)
        elif settings.health_listen:
            runner = await start_web(settings, deps, pool, health_only=True)
        if worker:
            workers = WorkerLoop(deps, pool)
            worker_task = asyncio.create_task(workers.run())
        watcher = asyncio.create_task(_refresh_rules(deps.rules, settings.rules_reload_seconds))
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload_now, deps.rules)
        stop = asyncio.create_task(_wait_for_signal())
        waiting: set[asyncio.Task[None]] = {stop} | ({worker_task} if worker_task else set())
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if worker_task is not None and worker_task.done() and not stop.done():
            log.error("worker.ended_unexpectedly")
            raise SystemExit(1)  # let systemd / Kubernetes restart the process
        await _stop_gracefully(smtp, workers, settings.shutdown_timeout_seconds)
    finally:
        if smtp is not None:
            for server in smtp.servers:
                server.close()
        if worker_task is not None:
            worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker_task
        if watcher is not None:
            watcher.cancel()
        if runner is not None:
            await runner.cleanup()
        await pool.aclose()
        with contextlib.suppress(Exception):
            await deps.close()
        deps.engine.dispose()
        log.info("shutdown.complete")


async def _stop_gracefully(smtp: Gateway | None, workers: WorkerLoop | None, grace: float) -> None:
    """Gateway and worker finish what they have begun, side by side, within `grace` s; a second signal cuts it."""
    started = time.monotonic()
    log.info("shutdown.started", grace=grace)
    parts = [*([smtp.stop(grace)] if smtp else []), *([workers.drain(grace)] if workers else [])]

    async def drain_all() -> None:
        await asyncio.gather(*parts)

    draining = asyncio.create_task(drain_all())
    second_signal = asyncio.create_task(_wait_for_signal())
    await asyncio.wait({draining, second_signal}, return_when=asyncio.FIRST_COMPLETED)
    if not draining.done():
        log.warning("shutdown.cut_short")
        draining.cancel()
    second_signal.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await draining
    log.info("shutdown.drained", seconds=round(time.monotonic() - started, 2))


class WorkerLoop:
    """The worker role: started again after a Redis outage ends arq's main loop, drained on a stop."""

    def __init__(self, deps: Deps, pool: ArqRedis) -> None:
        self.deps = deps
        self.pool = pool
        self.worker: LeasedWorker | None = None

    async def run(self) -> None:
        if not self.deps.rules.loaded:
            # jobs need a rule set: mail stays stored and queued until the files are fixed (the watcher loads them)
            log.warning("worker.waiting_for_rules")
            # polled: the flag is set by a reload in a worker thread, and a thread waiting on an Event would
            # hold up the loop's shutdown when the files are never fixed
            while not self.deps.rules.loaded:  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            log.info("worker.rules_loaded")
        delay = 1.0
        while True:
            worker = self.worker = build_worker(self.deps, self.pool, handle_signals=False)
            try:
                await worker.async_run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("worker.stopped", error=type(exc).__name__, retry_in=delay)
            finally:
                # Not worker.close(): it closes the pool we share and re-raises its jobs' cancellations. A
                # cancelled job gives its untransmitted claims back (services/worker/jobs.py).
                jobs = list(worker.tasks.values())
                for job in jobs:
                    job.cancel()
                await asyncio.gather(*jobs, return_exceptions=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def drain(self, grace: float) -> None:
        worker = self.worker
        if worker is None:
            return
        finished, cancelled = await worker.drain(grace)
        log.info("worker.drained", finished=finished, cancelled=cancelled)


async def _connect_redis(url: str) -> ArqRedis:
    """Wait for Redis at start-up instead of exiting: mail is stored meanwhile and swept later."""
    delay = 0.5
    while True:
        try:
            return await queue.connect(url)
        except Exception as exc:
            log.error("redis.unavailable", error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _refresh_rules(rules: RuleSetHolder, interval: float) -> None:
    """Poll the rule files; interval 0 leaves reloading to SIGHUP alone."""
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(rules.refresh)
        except Exception as exc:
            log.error("rules.watch_failed", error=type(exc).__name__)


def _reload_now(rules: RuleSetHolder) -> None:
    log.info("rules.sighup")
    asyncio.get_running_loop().run_in_executor(None, lambda: rules.refresh(force=True))


def serve(
    settings: Settings, *, gateway: bool = True, worker: bool = True, web_app: bool = True, migrate: bool = True
) -> None:
    if migrate:
        upgrade(settings.effective_database_url)
    redis_url, embedded = ensure_redis(settings)
    # uvloop: 5 % less worker CPU and 10-15 % less gateway CPU per mail (bench/README.md). aiosmtpd's STARTTLS
    # swaps in asyncio's SSLProtocol under the transport; tests/test_reliability.py runs it on this loop too.
    uvloop.install()
    try:
        asyncio.run(run(settings, gateway=gateway, worker=worker, web_app=web_app, redis_url=redis_url))
    finally:
        if embedded is not None:
            embedded.stop()
