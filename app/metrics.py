"""Prometheus metrics, served at /metrics."""

from prometheus_client import Counter, Gauge, Histogram

from app.wecom.errors import KNOWN_ERRCODES

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


def errcode_label(errcode: int | None, http_status: int | None) -> str:
    """WECOM_API_CALLS' errcode label: a known errcode, "other" for any other (WeCom's answer
    must not mint time series), else the HTTP status, or "None" when no answer came."""
    if errcode is None:
        return str(http_status)
    return str(errcode) if errcode in KNOWN_ERRCODES else "other"


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

# Queues, outcomes and retention (issue 10 items 4 and 5). The queue gauges describe the
# database, not this process: every replica shows the same values, as last read (by
# /metrics at most every 10 s, and by the housekeeping round every minute).
PROCESSING_LAG = Gauge(
    "wecom_hub_processing_lag_seconds",
    "Age of the oldest event waiting for a processor (pending, and not waiting out a "
    "retry's backoff); 0 when none waits.",
)
EVENTS_PENDING = Gauge(
    "wecom_hub_events_pending", "Events not processed yet, those waiting to retry included."
)
ACTIONS_PENDING = Gauge(
    "wecom_hub_actions_pending",
    "Actions waiting to run, by kind, those waiting to retry included.",
    ["kind"],
)
ACTION_ERRORS = Counter(
    "wecom_hub_action_errors_total",
    "Action attempts that ended in an error, by kind, status (failed, expired, retry) and "
    "error code, bounded: see action_error_label.",
    ["kind", "status", "error_code"],
)
EVENTS_PRUNED = Counter(
    "wecom_hub_events_pruned_total",
    "Processed events deleted for being older than WECOM_HUB_EVENT_RETENTION_DAYS.",
)


def action_error_label(code: str) -> str:
    """An action's error code as a label. `wecom.<errcode>` and `http.<status>` come from the
    network, and every distinct label value is a time series kept for ever: a known errcode
    keeps its own (`wecom.45009`), any other is `wecom.other`; a webhook receiver's status is
    its class (`http.5xx`) except 410 and 429, which change what wecom-hub does. The codes
    wecom-hub names itself (`crash`, `timeout`, `wecom.unanswered`…) pass as they are."""
    family, _, rest = code.partition(".")
    if family == "wecom" and rest != "unanswered":
        try:
            known = int(rest) in KNOWN_ERRCODES
        except ValueError:
            known = False
        return code if known else "wecom.other"
    if family == "http":
        if rest in ("410", "429"):
            return code
        return f"http.{rest[0]}xx" if len(rest) == 3 and rest.isdigit() else "http.other"
    words = code.replace("_", "").replace(".", "")
    plain = len(code) <= 32 and words.isascii() and words.isalpha() and words.islower()
    return code if plain else "other"
