"""Configuration common to every service, read from ``WAYBILL_*`` environment variables.

Each service subclasses :class:`ServiceSettings` and adds what only it needs. Nothing
here is read at import time: settings objects are built by the composition roots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["shop", "warehouse", "ops", "admin"]


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "waybill"


class KafkaSettings(BaseSettings):
    """How to reach the broker (CONTRACT section 1, configuration)."""

    model_config = SettingsConfigDict(env_prefix="WAYBILL_KAFKA_", extra="ignore")

    bootstrap: str = "127.0.0.1:19092"
    security: Literal["PLAINTEXT", "SASL_SSL", "SSL", "SASL_PLAINTEXT"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: str | None = None
    password: SecretStr | None = None
    cafile: Path | None = None
    #: put before every topic name, e.g. "staging." (several environments, one cluster)
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", max_length=100)
    topic_partitions: int = Field(default=6, ge=1, le=256)
    replication_factor: int = Field(default=1, ge=1, le=5)
    #: a consumer is declared dead after this long without a heartbeat; the embedded
    #: broker also waits half of it before completing a group join
    session_timeout_ms: int = Field(default=10_000, ge=1_000, le=300_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100, le=60_000)
    #: a fetch waits for records as long as none came, within these bounds, and fetches
    #: start at most every fetch_wait_min_ms (shared/messaging/fetch.py): little latency
    #: under traffic, records of a trickle fetched together, few requests when idle
    fetch_wait_min_ms: int = Field(default=25, ge=0, le=10_000)
    fetch_wait_max_ms: int = Field(default=500, ge=1, le=10_000)
    #: under load fetches are spaced more, in proportion to the records arriving per
    #: second, up to fetch_spacing_max_ms at fetch_spacing_full_rate records/s: fewer,
    #: larger batches (shared/messaging/fetch.py); equal to fetch_wait_min_ms: no growth
    fetch_spacing_max_ms: int = Field(default=80, ge=0, le=10_000)
    fetch_spacing_full_rate: int = Field(default=700, ge=1, le=10_000_000)


class ServiceSettings(BaseSettings):
    """What every service needs: broker, database, tokens, telemetry, batch sizes."""

    model_config = SettingsConfigDict(env_prefix="WAYBILL_", extra="ignore")

    database_url: str | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    otlp_endpoint: str | None = None
    http_host: str = "127.0.0.1"

    token_shop: SecretStr | None = None
    token_warehouse: SecretStr | None = None
    token_ops: SecretStr | None = None
    token_admin: SecretStr | None = None

    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=8, ge=1, le=64)
    consumer_batch_max: int = Field(default=500, ge=1, le=10_000)
    #: the longest a poll waits for records (it returns as soon as some are there)
    consumer_batch_wait_ms: int = Field(default=500, ge=1, le=5_000)
    #: a batch of fewer than consumer_linger_records records waits this long for more: a
    #: trickle of records is handled a few at a time instead of one by one (0: never waits)
    consumer_linger_ms: int = Field(default=0, ge=0, le=1_000)
    consumer_linger_records: int = Field(default=100, ge=1, le=10_000)
    consumer_max_attempts: int = Field(default=5, ge=1, le=50)
    consumer_retry_base_seconds: float = Field(default=0.2, gt=0, le=60)
    outbox_batch_max: int = Field(default=1000, ge=1, le=10_000)
    outbox_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    #: how often a service checks its topics exist (a memory-only broker loses them when it
    #: restarts) and measures its consumer lag
    broker_check_seconds: float = Field(default=10.0, gt=0, le=600)
    #: how often a service reads the broker epoch (shared/messaging/epoch.py): how soon it
    #: notices that the broker lost its data
    broker_epoch_check_seconds: float = Field(default=2.0, gt=0, le=600)
    #: when the broker lost its data, the outbox rows of this many seconds back are
    #: published again: longer than any consumer (Waybill's or a shop's) may lag behind
    broker_loss_republish_seconds: float = Field(default=300.0, ge=0, le=7 * 86400)
    #: set by the supervisor of ``waybill up`` when it starts this process again after it
    #: ended unexpectedly: how often, how it last ended, when (shown in GET /ops/health)
    supervisor_restarts: int = Field(default=0, ge=0)
    supervisor_last_exit: str | None = None
    supervisor_restarted_at: str | None = None

    #: the HTTP intake (POST /orders) takes at most this many requests a second per shop key,
    #: with bursts up to rate_limit_burst; more: 429 with Retry-After. Per process: with N
    #: replicas behind a load balancer a key gets up to N times as much. Role tokens are not
    #: limited (the platform's own integrations).
    rate_limit_per_second: float = Field(default=20.0, gt=0, le=100_000)
    rate_limit_burst: int = Field(default=40, ge=1, le=1_000_000)

    def tokens(self) -> dict[Role, str]:
        """The configured bearer token of each role (roles without one accept nothing)."""
        configured: dict[Role, SecretStr | None] = {
            "shop": self.token_shop,
            "warehouse": self.token_warehouse,
            "ops": self.token_ops,
            "admin": self.token_admin,
        }
        return {role: s.get_secret_value() for role, s in configured.items() if s is not None}
