"""One typed Settings object, read from CHANNELSHIFT_* environment variables."""

from __future__ import annotations

import ipaddress
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _shipped(folder: str) -> Path:
    """The folder shipped beside the package, or the one in the working directory."""
    beside_package = PROJECT_ROOT / folder
    return beside_package if beside_package.is_dir() else Path(folder)


class Settings(BaseSettings):
    """Runtime configuration; every field maps to CHANNELSHIFT_<FIELD>."""

    # frozen: a process and a test see one configuration; a variant is a copy (`model_copy(update=...)`)
    model_config = SettingsConfigDict(env_prefix="CHANNELSHIFT_", extra="ignore", frozen=True)

    var_dir: Path = Path("var")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite file under var_dir")
    db_pool_size: int = Field(default=5, description="PostgreSQL connections per process (+ as many overflow)")
    redis_url: str | None = Field(
        default=None, description="redis://host:port/db; unset = embedded redis-server under var_dir"
    )
    smtp_listen: str = "127.0.0.1:2525"
    lmtp_listen: str | None = Field(default="127.0.0.1:2424", description="empty disables LMTP")
    web_listen: str = "127.0.0.1:8080"
    health_listen: str | None = Field(
        default=None, description="gateway/worker processes: HOST:PORT for /healthz, /readyz and /metrics"
    )
    hostname: str = "channelshift.local"
    relay_url: str | None = Field(default=None, description="smtp://host:port for replies; unset = maildir")
    delivery_url: str | None = Field(
        default=None, description="smtp://host:port for originals to staff; unset = maildir"
    )
    delivery_fallback_to: str | None = Field(
        default=None,
        description="ASCII staff address for the wrapper when the delivery relay cannot take the staff address (UTF-8)",
    )
    rules_dir: Path = Field(default_factory=lambda: _shipped("routing_rules"))
    templates_dir: Path = Field(default_factory=lambda: _shipped("templates"))
    admin_token: str | None = None
    public_url: str = Field(
        default="http://127.0.0.1:8080", description="base URL of the web process as citizens reach it (/r/ links)"
    )
    demo_dates: bool = Field(
        default=False,
        description="honour X-Channelshift-Demo-Received from loopback clients (demo-traffic); never in production",
    )
    track_clicks: bool = Field(default=True, description="route reply links through /r/<token> to count clicks")
    pseudonym_key: str | None = Field(
        default=None, description="HMAC key for sender pseudonyms; unset = random key kept in var_dir"
    )
    pseudonym_key_id: str = "k1"
    retention_days: int = 30
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = Field(default=100, description="RCPT commands per message; more get 452")
    max_line_length: int = Field(
        default=100_000, description="longest SMTP line accepted; RFC 5321 says 1000 but real mail breaks it"
    )
    max_connections_per_client: int = Field(default=20, description="concurrent sessions per client IP; more get 421")
    smtp_timeout: float = Field(default=300.0, description="idle seconds before a session is dropped")
    # gateway memory bound (docs/reliability.md): what DATA may hold in RAM and on disk while it is received
    spool_threshold_bytes: int = Field(
        default=1024 * 1024, ge=0, description="DATA past this size goes to a temporary file under var_dir/spool"
    )
    max_inflight_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="bytes of unfinished DATA across all sessions; beyond: 452 4.3.1"
    )
    max_commit_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1,
        description="spooled mail read back into RAM for its durable write at once; a larger mail goes alone",
    )
    smtp_transaction_timeout: float = Field(
        default=1800.0, gt=0, description="longest DATA transfer; the idle timeout restarts with every line received"
    )
    tls_cert_file: Path | None = Field(default=None, description="PEM certificate for STARTTLS")
    tls_key_file: Path | None = Field(default=None, description="PEM private key for STARTTLS")
    retry_base_seconds: float = Field(default=15.0, description="first retry delay of a transient send failure")
    job_timeout_seconds: int = Field(default=120, description="arq job timeout of process and send jobs")
    worker_concurrency: int = Field(
        default=20, ge=1, le=1000, description="jobs one worker process runs at once (arq max_jobs)"
    )
    relay_pool_size: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="connections to each relay one worker keeps open and uses at once; unset = worker_concurrency",
    )
    reply_window_days: int = 7
    reply_daily_cap: int = 3
    # Stopping and recovering (docs/reliability.md): a running worker renews its claims and its jobs'
    # in-progress keys; work whose worker stopped renewing is taken over after stale_after_seconds.
    classify_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a mail classified for longer goes to staff flagged (limit:classify-timeout), unanswered",
    )
    shutdown_timeout_seconds: float = Field(
        default=20.0, ge=0, description="SIGTERM/SIGINT: how long jobs in flight and open SMTP transactions may finish"
    )
    stale_after_seconds: int = Field(
        default=20, ge=3, description="a claim or running job not renewed for this long belongs to a stopped worker"
    )
    sweep_interval_seconds: int = Field(default=10, description="how often the sweep runs (divisor of 60)")
    sweep_after_seconds: int = Field(default=60, description="age after which unqueued work is re-enqueued")
    rules_reload_seconds: float = Field(default=2.0, description="poll interval for rule files; 0 = only on SIGHUP")
    spam_score_header: str | None = Field(
        default=None, description="e.g. X-Spam-Score; replies suppressed when the score reaches spam_score_threshold"
    )
    spam_score_threshold: float = 5.0
    trusted_authserv_ids: str = Field(
        default="", description="comma-separated authserv-ids whose Authentication-Results are believed (our MX)"
    )
    reply_auth: Literal["aligned", "not-failed", "off"] | None = Field(
        default=None, description="aligned | not-failed | off; unset = not-failed with trusted ids, else off"
    )
    reply_domain_daily_cap: int = Field(
        default=20, ge=0, description="unauthenticated replies per sender (organisational) domain per day"
    )
    log_format: str = Field(default="auto", description="auto | json | console")
    log_level: str = "INFO"
    corpus_dir: Path | None = Field(default=None, description="../shared/corpus for corpus tests")
    embeddings: bool = Field(
        default=True,
        description="ask the sentence-embedding model about mails the fast model is unsure of (off: n-grams alone)",
    )
    examples_dir: Path | None = Field(
        default=None, description="labelled example mails; unset = the rule set's model.examples folder"
    )
    model_cache_dir: Path | None = Field(
        default=None, description="trained intent models and example embeddings; unset = var_dir/model-cache"
    )
    # web hardening (dashboard sessions, proxies, open-bind guard, click batching)
    session_hours: float = Field(default=8.0, gt=0, description="lifetime of a dashboard login session")
    trusted_proxies: str = Field(
        default="", description="comma-separated IPs/CIDRs whose X-Forwarded-For/-Proto headers are believed"
    )
    allow_open_api: bool = Field(
        default=False, description="let the web role bind a non-loopback address without an admin token"
    )
    login_max_failures: int = Field(default=10, ge=1, description="failed logins per client and window before 429")
    login_window_seconds: int = Field(default=300, ge=1, description="window of login_max_failures")
    click_queue_size: int = Field(default=10_000, ge=1, description="clicks held in memory for the batch writer")
    # the managers' workbench (/workbench) and staff feedback on misroutes (/f/<token>)
    workbench_candidates_dir: Path | None = Field(
        default=None, description="folder whose sub-folders the workbench may replay as candidate rule sets"
    )
    workbench_max_upload_bytes: int = Field(
        default=5 * 1024 * 1024, ge=1024, description="largest .eml the workbench preview takes (upload or paste)"
    )
    feedback_links: bool = Field(default=True, description="originals for staff carry a signed misroute link")
    feedback_days: int = Field(default=60, ge=1, description="how long a staff feedback link stays valid")
    feedback_base_url: str | None = Field(
        default=None, description="base URL of the web process as staff reach it; unset = public_url"
    )
    feedback_max_per_hour: int = Field(
        default=60, ge=1, description="feedback submissions and bad feedback links per client and hour before 429"
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # ValueError names the bad entry
        return value

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        parts = [part.strip() for part in self.trusted_proxies.split(",")]
        return tuple(ipaddress.ip_network(part, strict=False) for part in parts if part)

    @field_validator(
        "lmtp_listen",
        "relay_url",
        "delivery_url",
        "redis_url",
        "database_url",
        "health_listen",
        "feedback_base_url",
        "workbench_candidates_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("sweep_interval_seconds")
    @classmethod
    def _divides_minute(cls, value: int) -> int:
        if value <= 0 or 60 % value:
            raise ValueError("sweep_interval_seconds must divide 60 (1, 2, 3, 5, 10, 15, 20, 30, 60)")
        return value

    @property
    def effective_database_url(self) -> str:
        url = self.database_url or f"sqlite:///{(self.var_dir / 'channelshift.db').resolve()}"
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def effective_relay_pool_size(self) -> int:
        return self.relay_pool_size or self.worker_concurrency

    @property
    def trusted_authserv_id_list(self) -> tuple[str, ...]:
        return tuple(item.strip().lower() for item in self.trusted_authserv_ids.split(",") if item.strip())

    @property
    def effective_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.var_dir / "model-cache"

    @property
    def effective_feedback_base_url(self) -> str:
        return (self.feedback_base_url or self.public_url).rstrip("/")

    @property
    def outbox_dir(self) -> Path:
        return self.var_dir / "outbox"

    @property
    def delivered_dir(self) -> Path:
        return self.var_dir / "delivered"

    @cached_property
    def effective_pseudonym_key(self) -> bytes:
        if self.pseudonym_key:
            return self.pseudonym_key.encode()
        key_file = self.var_dir / "pseudonym.key"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(secrets.token_hex(32))
            key_file.chmod(0o600)
        return key_file.read_text().strip().encode()


def split_host_port(listen: str) -> tuple[str, int]:
    """'127.0.0.1:2525' or '[::1]:2525' -> (host, port)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)
