"""structlog set-up: one JSON object a line (or console), phone numbers masked, secrets dropped.

Masking happens twice: `scrub` masks every string in an event (nested ones too) before it is
rendered, then the rendered line is masked once more, which catches what `scrub` cannot see
(an object's repr, a dict key). With `process=True` the stdlib loggers of the libraries
(uvicorn, asyncio, psycopg, redis, twilio) are rendered through the same chain.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# A `+` (or its URL encoding, or the fullwidth sign) and at least 7 digits, which may be
# spaced, dashed, dotted or bracketed as people write them: every E.164 length (7-15) and
# anything longer too. A masked number has at most 4 digits in a row, so masking again is a
# no-op.
_PHONE_RE = re.compile(r"(?:\+|%2[Bb]|\uff0b)(\d(?:[ .()\-]{0,2}\d){6,})")
# Keys whose values must never reach a log line, whatever the caller passes.
_SECRET_KEYS = frozenset(
    {
        "body",
        "message_body",
        "text",
        "auth_token",
        "admin_token",
        "token",
        "authorization",
        "password",
        "secret",
    }
)
_MAX_NESTING = 8  # deeper values are left to the rendered line's mask
_HANDLER_NAME = "smsrelay"


def mask_phone(phone: str) -> str:
    """`+14155552671` -> `+1415***2671`, `+6837012` -> `+683***2`.

    At least 3 digits hidden whatever the length, at most 4 shown at each end: enough to
    tell numbers apart, not to dial one.
    """
    digits = [ch for ch in phone if ch.isdigit()]
    shown = max(len(digits) - max(3, len(digits) - 8), 0)
    head = min(4, max(shown - 1, 0))
    tail = shown - head
    return "+" + "".join(digits[:head]) + "***" + "".join(digits[len(digits) - tail :])


def mask_phones(text: str) -> str:
    """Mask every phone number inside a free text (provider error messages quote them)."""
    return _PHONE_RE.sub(lambda m: mask_phone(m.group(1)), text)


def _is_secret(key: object) -> bool:
    return isinstance(key, str) and key.lower() in _SECRET_KEYS


def _mask_value(value: Any, depth: int = 0) -> Any:
    """`value` with its phone numbers masked; containers are copied, never changed in place."""
    if isinstance(value, str):
        return mask_phones(value)
    if depth >= _MAX_NESTING:
        return value
    if isinstance(value, dict):
        return {
            k: "[redacted]" if _is_secret(k) else _mask_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask_value(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_mask_value(v, depth + 1) for v in value)
    return value


def scrub(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = "[redacted]" if _is_secret(key) else _mask_value(event_dict[key])
    return event_dict


def _mask_rendered(_: Any, __: str, line: Any) -> Any:
    return mask_phones(line) if isinstance(line, str) else line


def configure(log_format: str = "json", log_level: str = "info", *, process: bool = True) -> None:
    """Set structlog up; `process=True` (our commands) also routes the stdlib loggers."""
    level = getattr(logging, log_level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub,
            renderer,
            _mask_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if process:
        _route_stdlib_logging(level, renderer)


def _route_stdlib_logging(level: int, renderer: Any) -> None:
    """Render what libraries log through stdlib `logging` like our own events, masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                scrub,
                renderer,
                _mask_rendered,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)  # configured again (another format): one line per record
    root.addHandler(handler)
    # Keep the libraries' noise (and the SDK's request dumps) at warning and above.
    root.setLevel(max(level, logging.WARNING))
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
