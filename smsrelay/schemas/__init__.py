"""Pydantic models of everything that crosses a boundary: stream entries, records, API bodies."""

from __future__ import annotations

from smsrelay.schemas.dead_letter import DeadLetter, DeadLetterReason
from smsrelay.schemas.entry import (
    SCHEMA_VERSION,
    InvalidEntry,
    MessageRequest,
    RequestEntry,
    entry_json_schema,
    parse_entry,
)
from smsrelay.schemas.segments import segment_count, segment_info

__all__ = [
    "SCHEMA_VERSION",
    "DeadLetter",
    "DeadLetterReason",
    "InvalidEntry",
    "MessageRequest",
    "RequestEntry",
    "entry_json_schema",
    "parse_entry",
    "segment_count",
    "segment_info",
]
