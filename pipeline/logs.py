"""Structured logs: one event per line, key=value text or JSON, never secrets."""

from __future__ import annotations

import json
import logging
import sys
import time

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool):
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                  "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        fields.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info).splitlines()[-1]
        if self.as_json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_text(v)}" for k, v in fields.items())


def _text(value) -> str:
    s = str(value)
    return json.dumps(s) if (not s or any(c in s for c in ' "=\n')) else s


def configure(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt == "json"))
    root = logging.getLogger("tickcast")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # kafka-python is chatty at INFO (every connection); its warnings still show.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("kafka").handlers[:] = [handler]
    logging.getLogger("kafka").propagate = False
    # Its event loop warns whenever a task (e.g. checksumming a large fetch) takes over 100 ms.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"tickcast.{name}")
