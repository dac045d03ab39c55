"""structlog set-up: one JSON object a line (or console), phone numbers masked, secrets dropped."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_PHONE_RE = re.compile(r"\+\d{8,15}")
# Keys whose values must never reach a log line, whatever the caller passes.
_SECRET_KEYS = frozenset({"body", "message_body", "text", "auth_token", "admin_token", "token",
                          "authorization", "password", "secret"})


def mask_phone(phone: str) -> str:
    """`+18761234567` -> `+1876***4567`: enough to tell numbers apart, not to dial one."""
    if len(phone) < 9:
        return phone[:2] + "***"
    return phone[:5] + "***" + phone[-4:]


def mask_phones(text: str) -> str:
    """Mask every phone number inside a free text (provider error messages quote them)."""
    return _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), text)


def _mask_value(value: Any) -> Any:
    return mask_phones(value) if isinstance(value, str) else value


def scrub(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "[redacted]"
        else:
            event_dict[key] = _mask_value(event_dict[key])
    return event_dict


def configure(log_format: str = "json", log_level: str = "info", *, process: bool = True) -> None:
    """Set structlog up; `process=True` (our commands) also routes the stdlib loggers."""
    level = getattr(logging, log_level.upper(), logging.INFO)
    renderer: Any = (structlog.processors.JSONRenderer() if log_format == "json"
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if not process:
        return
    # Libraries log through stdlib logging; keep their noise (and the SDK's request dumps,
    # which contain phone numbers) at warning and above.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
    for noisy in ("twilio", "twilio.http_client", "twilio.async_http_client", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    # Imported as a library into an app that has not set structlog up, smsrelay must not print
    # to the app's stdout (structlog's default): it logs JSON to stderr, warnings and up. An
    # app that configures structlog itself (before or after) is left alone; the CLI configures
    # from SMSRELAY_LOG_FORMAT / SMSRELAY_LOG_LEVEL.
    if not structlog.is_configured():
        configure("json", "warning", process=False)
    return structlog.get_logger(name)
