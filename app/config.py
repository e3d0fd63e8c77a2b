"""All settings, read from the environment with the prefix WECOM_HUB_ (and a .env file)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WECOM_HUB_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="Postgres URL. Unset: start an embedded Postgres in data_dir.",
    )
    data_dir: Path = Field(
        default=Path(".wecom-hub"),
        description="Embedded Postgres data and the generated secret key live here.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="URL-safe Base64 of 32 bytes; encrypts stored secrets. Required with "
        "database_url; in embedded mode one is generated into data_dir.",
    )

    callback_timestamp_window: int = Field(
        default=600,
        ge=0,
        description="Reject callbacks whose timestamp is further than this many seconds from "
        "now, either way. 0 turns the check off.",
    )
    api_max_body_bytes: int = Field(
        default=16 << 20,
        ge=1024,
        description="A REST API request body larger than this is refused with 413 "
        "payload_too_large (attachment uploads: the largest file WeCom takes).",
    )
    callback_max_body_bytes: int = Field(
        default=64 * 1024,
        gt=0,
        description="Larger callback bodies are refused (413) unread. WeCom's are small: a "
        "text message of 4,000 CJK characters is 16 KiB, a group join of 800 customers "
        "60 KiB.",
    )

    ingest_commit_window_ms: float = Field(
        default=0.0,
        ge=0,
        description="Group commit: how long the first callback of a batch waits for others. "
        "0: none, and a batch is what came while the batches before it were committed; "
        "at full load that is as large a batch, sooner (ADR 0008).",
    )
    ingest_batch_max: int = Field(default=256, gt=0)
    ingest_flushers: int = Field(default=2, gt=0, description="Batches committed concurrently.")
    ingest_queue_max: int = Field(
        default=4096,
        gt=0,
        description="Callbacks waiting to be committed, at most; beyond that 503 ingest_busy "
        "(WeCom retries) instead of memory growing while Postgres is slow.",
    )
    app_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long an app's keys are cached in memory; a removed app stops "
        "verifying on other replicas after at most this long.",
    )
    database_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        description="Connect and statement timeout, kept well under WeCom's 5 s so an "
        "unreachable database becomes a 503 that WeCom retries.",
    )

    process_in_serve: bool = Field(
        default=True,
        description="Run the event processor and action runner inside `serve`. Turn off "
        "when separate `wecom-hub worker` processes do it.",
    )
    shutdown_seconds: float = Field(
        default=10.0,
        gt=0,
        description="On SIGTERM, how long work in hand may take to finish; what is still "
        "running then is cut off and released at once to other processes.",
    )
    processor_batch_size: int = Field(default=100, gt=0)
    processor_lease_seconds: float = Field(
        default=60.0, gt=0, description="How long a claim lasts before another may take over."
    )
    processor_max_attempts: int = Field(default=8, gt=0)
    processor_poll_seconds: float = Field(
        default=1.0, gt=0, description="Fallback poll, in case a NOTIFY is missed."
    )
    claim_interval_ms: float = Field(
        default=30.0,
        ge=0,
        description="While work keeps coming, the least time between two claims of the event "
        "processor or the action runner: more events or actions per claim, fewer statements "
        "(ADR 0008). The first claim after a quiet spell goes at once, and a full batch "
        "is not followed by a wait.",
    )

    wecom_api_base_url: str = Field(
        default="https://qyapi.weixin.qq.com",
        description="Where the WeCom API is; point it at `wecom-hub sim serve` to simulate.",
    )
    wecom_api_timeout_seconds: float = Field(default=5.0, gt=0)
    wecom_api_calls_per_minute: int = Field(
        default=9000,
        gt=0,
        description="Per corp and API, per process (WeCom allows 10,000 a minute).",
    )
    wecom_api_calls_per_hour: int = Field(
        default=135_000,
        gt=0,
        description="Per corp and API, per process (WeCom allows 150,000 an hour).",
    )
    wecom_api_concurrency: int = Field(
        default=8, gt=0, description="Calls in flight per corp and API (45033 beyond that)."
    )
    media_dir: Path | None = Field(
        default=None,
        description="The folder a welcome rule's attachment `file` is read from, when the "
        "rule is saved (a relative name is taken inside it; a path or symlink leading out "
        "is refused). Unset: rules cannot name files, only media_id or links.",
    )
    webhook_timeout_seconds: float = Field(
        default=15.0, gt=0, description="How long a webhook receiver has to answer."
    )
    webhook_concurrency: int = Field(
        default=16,
        gt=0,
        description="Deliveries in flight per process, beside (never instead of) WeCom calls.",
    )
    webhook_allow_cidrs: list[str] = Field(
        default_factory=list,
        description="Addresses a webhook may go to although denied (e.g. 169.254.0.0/16 for a "
        'receiver on a link-local network). JSON list, e.g. ["169.254.10.0/24"].',
    )
    webhook_deny_cidrs: list[str] = Field(
        default_factory=list,
        description="Addresses a webhook may not go to, beside link-local and cloud metadata "
        "(always denied unless allowed). Private networks are allowed by default: receivers "
        "are internal systems.",
    )
    webhook_retry_scale: float = Field(
        default=1.0,
        gt=0,
        description="Multiplies the webhook retry schedule (5 s … 24 h); tests shorten it.",
    )
    webhook_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a process remembers which event types anyone subscribes to: a "
        "new subscription receives events within this time.",
    )
    webhook_disable_after_days: float = Field(
        default=5.0,
        gt=0,
        description="A subscription whose deliveries all fail this long is disabled.",
    )
    # Security (issue 10 item 6): bounds on what the network may make us read or keep.
    wecom_api_max_answer_bytes: int = Field(
        default=4 * 1024 * 1024,
        gt=0,
        description="A WeCom API answer larger than this is refused, not read (the largest "
        "real ones, a page of 100 customers, are a few hundred KiB).",
    )
    # Logs, metrics and retention (issue 10 items 4 and 5).
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one object per line (time, level, logger, message and every "
        "field), for a log collector; `text`: the same fields as key=value, for people.",
    )
    ready_max_lag_seconds: float = Field(
        default=300.0,
        ge=0,
        description="/readyz reports `degraded` (still 200) when the oldest event waiting "
        "for a processor is older than this. 0 turns the check off.",
    )
    event_retention_days: int = Field(
        default=180,
        ge=0,
        description="Processed events older than this are deleted, in small batches, once a "
        "minute; customers, follows, messages and actions stay. 0 keeps events for ever.",
    )
    # Secrets (issue 10 item 6): from files, for Docker/Kubernetes secrets, kept out of the
    # environment that `docker inspect` and /proc/<pid>/environ show; key rotation.
    secret_key_file: Path | None = Field(
        default=None,
        description="A file holding the secret key (one trailing newline is ignored), "
        "instead of secret_key; e.g. /run/secrets/wecom_hub_secret_key.",
    )
    database_password_file: Path | None = Field(
        default=None,
        description="A file holding the password for database_url, whose own URL then has "
        "none (one trailing newline is ignored); no URL escaping is needed.",
    )
    previous_secret_keys: SecretStr | None = Field(
        default=None,
        description="During a key rotation, the keys replaced (comma-separated): what they "
        "sealed still opens, while everything newly stored is sealed with the current key, "
        "until `wecom-hub secret-key rotate` has sealed it all again.",
    )
    previous_secret_keys_file: Path | None = Field(
        default=None,
        description="A file holding previous_secret_keys instead (comma- or "
        "newline-separated), e.g. /run/secrets/wecom_hub_previous_secret_keys.",
    )
    # The admin listener (issue 10 item 6).
    admin_port: int | None = Field(
        default=None,
        gt=0,
        lt=65536,
        description="When set, /metrics, /docs and /openapi.json answer only on this port, "
        "which `serve` listens on beside --port: keep it off the public listener.",
    )
    # Slow clients (issue 10 item 6): how many connections `serve` holds and for how long.
    # uvicorn has no header read timeout: the reverse proxy in front bounds that (README).
    serve_limit_concurrency: int = Field(
        default=1000,
        gt=0,
        description="Connections and requests `serve` handles at once; a request beyond them "
        "gets 503 at once (WeCom retries) instead of memory growing with each slow client.",
    )
    serve_keep_alive_seconds: int = Field(
        default=5,
        gt=0,
        description="An idle keep-alive connection is closed after this long.",
    )
    callback_body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A callback whose whole body has not arrived within this time is refused "
        "(408 body_timeout) and its connection closed.",
    )
    # Broadcasts (群发, issue 12): how long and how often their results are read.
    broadcast_horizon_hours: float = Field(
        default=72.0,
        gt=0,
        description="A broadcast's results are read until every member has sent it, or "
        "until this long after it was made: then it is `completed` as it stands.",
    )
    broadcast_poll_seconds: float = Field(
        default=60.0,
        gt=0,
        description="When a broadcast's results are first read after it is made; each later "
        "read waits twice as long as the one before, up to broadcast_poll_max_seconds.",
    )
    broadcast_poll_max_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="The longest wait between two reads of a broadcast's results.",
    )
    log_level: str = "INFO"


@lru_cache
def get_settings() -> Settings:
    return Settings()
