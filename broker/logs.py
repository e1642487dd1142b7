"""Logging for the long-running commands (`serve`, `worker`, `scheduler`) and the CLI:
human text or one JSON object per line (`BROKER_LOG_FORMAT=json`), secrets redacted from
every record whatever its logger (our own, an SDK's, httpx's, Celery's).

Redaction (`broker.domain.redact`) runs on the final message and on the extra fields: bearer
tokens, `key=`/`token=` parameters, AWS key ids, Slack webhook paths (`/services/`,
`/triggers/`, `/workflows/`) and tokens, broker API keys become `***`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from broker.domain import redact

#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


class RedactFilter(logging.Filter):
    """Rewrites each record's message (args merged), traceback and extra fields with secrets
    masked. Extras that are not plain numbers, booleans or None become redacted strings (a
    dict or an exception could hold a secret in its text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format call must not raise at the caller: log it raw
            message = f"{record.msg} {record.args!r}"
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.msg, record.args = redact(message), None
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD or isinstance(value, (bool, int, float, type(None))):
                continue
            setattr(record, key, redact(value if isinstance(value, str) else str(value)))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record got from `extra=` (ids, names, counts)."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger message key=value ...`: the extra fields after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {fields}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, message, the extra
    fields, and `exc` (the redacted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            out[key] = value if isinstance(value, (int, float, bool, type(None))) else str(value)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "WARNING", fmt: str = "text") -> None:
    """One handler on the root logger (stderr), redacting, in `fmt` (`text` or `json`)."""
    handler = logging.StreamHandler()
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_broker", False):
            root.removeHandler(old)
    handler._broker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own logging config (if anything in this process applied it) gives its
    # loggers their own unredacted handlers and stops propagation: undo that, so every line
    # goes through the handler above.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
