"""A row of `public.failed_sms`: one message that could not be sent, and what became of it."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class RecordStatus(StrEnum):
    FAILED = "failed"
    REPLAYED = "replayed"
    RESOLVED = "resolved"


class FailedSmsRecord(BaseModel):
    """The seed's FailedSMS model plus the contract's columns and three of our own.

    `namespace`, `shard` and `dead_letter_id` locate the dead-letter stream entry the row
    mirrors, so a delete can remove it and a replay can read the original fields back.
    """

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    phone: str
    message: str
    error: str | None
    attempts: int
    created_at: datetime
    last_attempt_at: datetime | None
    reason: str
    status: RecordStatus
    message_sid: str | None
    resolved_at: datetime | None
    namespace: str
    shard: int
    dead_letter_id: str | None


class RecordPage(BaseModel):
    model_config = ConfigDict(frozen=True)

    records: list[FailedSmsRecord]
    total: int
    limit: int
    offset: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.records) < self.total
