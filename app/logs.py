"""Logging set-up: secrets in URLs never reach the logs."""

from __future__ import annotations

import logging
import re

_SECRET_QS = re.compile(r"((?:token|password|key)=)[^&\s\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """Replace the values of token/password/key query parameters with '***'."""
    return _SECRET_QS.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    """Redacts secrets in a record's message and arguments (uvicorn's access log included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_redaction() -> None:
    """Attach the redaction filter to the loggers that print request lines."""
    for name in ("uvicorn.access", "uvicorn.error", "app"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
