"""The dead-letter stream entry: the original fields plus why and when it could not be sent."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from smsrelay.schemas.entry import decode_fields


class DeadLetterReason(StrEnum):
    RATE_LIMITED = "rate_limited"
    RETRIES_EXHAUSTED = "retries_exhausted"
    PERMANENT_ERROR = "permanent_error"
    INVALID_PAYLOAD = "invalid_payload"
    POISON = "poison"
    EXPIRED = "expired"
    UNDELIVERED = "undelivered"


# Fields the worker adds to the original entry's fields. An original field of the same name
# (possible only in a malformed entry) is kept under `orig.<name>`. The `payload_*` fields say
# that the entry was larger than a dead letter keeps (streams.wire.dead_letter_fields).
DEAD_LETTER_FIELDS = (
    "reason",
    "error",
    "attempts",
    "first_attempt_at",
    "last_attempt_at",
    "dead_lettered_at",
    "source_entry_id",
    "payload_truncated",
    "payload_bytes",
    "payload_fields",
)

# Message ids of malformed entries are derived from the stream entry id, so mirroring the
# same dead letter twice still lands on one row.
_INVALID_NS = uuid.UUID("6f7c1f0e-6a1b-4b53-9a53-0f5b8ad3c6f1")


class DeadLetter(BaseModel):
    """A dead-letter entry as the mirror and the admin read it (lenient: payloads may be junk)."""

    model_config = ConfigDict(frozen=True)

    stream_id: str
    message_id: str
    phone: str
    message: str
    reason: str
    error: str
    attempts: int
    first_attempt_at: str | None
    last_attempt_at: str | None
    dead_lettered_at: str | None
    created_at: str | None
    fields: dict[str, str]

    @classmethod
    def from_stream(
        cls, stream_id: str, raw: Mapping[bytes, bytes] | Mapping[str, str]
    ) -> DeadLetter:
        try:
            fields = decode_fields(raw)
        except ValueError:
            fields = {
                (k.decode(errors="replace") if isinstance(k, bytes) else k): (
                    v.decode(errors="replace") if isinstance(v, bytes) else v
                )
                for k, v in raw.items()
            }
        message_id = fields.get("id", "")
        try:
            message_id = str(uuid.UUID(message_id))
        except ValueError:
            message_id = str(uuid.uuid5(_INVALID_NS, fields.get("source_entry_id", stream_id)))
        try:
            attempts = max(0, int(fields.get("attempts", "0")))
        except ValueError:
            attempts = 0
        return cls(
            stream_id=stream_id,
            message_id=message_id,
            phone=fields.get("to", ""),
            message=fields.get("body", ""),
            reason=fields.get("reason", DeadLetterReason.INVALID_PAYLOAD.value),
            error=fields.get("error", ""),
            attempts=attempts,
            first_attempt_at=fields.get("first_attempt_at") or None,
            last_attempt_at=fields.get("last_attempt_at") or None,
            dead_lettered_at=fields.get("dead_lettered_at") or None,
            created_at=fields.get("created_at") or None,
            fields=fields,
        )

    @property
    def truncation_note(self) -> str | None:
        """`payload cut: 1048576 bytes in 10000 fields` when the entry was cut, else None."""
        if self.fields.get("payload_truncated") != "1":
            return None
        return (
            f"payload cut to 16 KiB: {self.fields.get('payload_bytes', '?')} bytes in "
            f"{self.fields.get('payload_fields', '?')} fields"
        )

    def original_fields(self) -> dict[str, str]:
        """The request entry as it was published (for a replay)."""
        return {
            k: v
            for k, v in self.fields.items()
            if k not in DEAD_LETTER_FIELDS and not k.startswith("orig.")
        }
