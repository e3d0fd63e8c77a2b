"""Prometheus metrics, served at /metrics."""

from prometheus_client import Counter, Histogram

CALLBACKS = Counter(
    "wecom_hub_callbacks_total",
    "Callbacks answered, by outcome: stored, duplicate, url_verified, or the rejection code.",
    ["outcome"],
)
CALLBACK_SECONDS = Histogram(
    "wecom_hub_callback_seconds",
    "Time from receiving a POST callback to answering it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
INGEST_BATCH_SIZE = Histogram(
    "wecom_hub_ingest_batch_size",
    "Callbacks committed together in one transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
EVENTS_PROCESSED = Counter(
    "wecom_hub_events_processed_total",
    "Events taken through processing, by outcome: processed, retry, failed.",
    ["outcome"],
)
WECOM_API_CALLS = Counter(
    "wecom_hub_wecom_api_calls_total",
    "Calls to the WeCom API, by API and errcode (or HTTP status when WeCom gave none).",
    ["api", "errcode"],
)
WECOM_API_SECONDS = Histogram("wecom_hub_wecom_api_seconds", "WeCom API call latency.", ["api"])
ACTIONS_FINISHED = Counter(
    "wecom_hub_actions_total",
    "Action attempts by kind and result: succeeded, skipped, failed, expired, retry.",
    ["kind", "status"],
)
WELCOME_SECONDS = Histogram(
    "wecom_hub_welcome_seconds",
    "From the add_external_contact event's CreateTime (whole seconds, so up to a second "
    "more than the truth) to WeCom accepting the welcome: what a welcome_code's 20 seconds "
    "are measured against.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 20),
)
WEBHOOKS_DISABLED = Counter(
    "wecom_hub_webhooks_disabled_total",
    "Webhook subscriptions disabled by wecom-hub: the receiver answered 410, or every "
    "delivery failed for WECOM_HUB_WEBHOOK_DISABLE_AFTER_DAYS.",
    ["reason"],
)
