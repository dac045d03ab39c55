"""Bodies of the admin HTTP API, in the seed's JSON shape (camelCase, ISO 8601 UTC times).

These models are the OpenAPI document too, so a schema-driven test checks every response.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from smsrelay import clock
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.records import FailedSmsRecord, RecordStatus

MAX_LIST_LIMIT = 500
MAX_OFFSET = 2**31 - 1
MAX_REPLAY_IDS = 1000
MAX_REPLAY_LIMIT = 10_000
DEFAULT_REPLAY_LIMIT = 100
REPLAYABLE_REASONS = [
    r.value for r in DeadLetterReason if r is not DeadLetterReason.INVALID_PAYLOAD
]
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def _parse_uuid(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a UUID string")
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise ValueError("must be a UUID like 0b7e9d6c-3f7a-4c1e-9d2b-5a8f6e4c3b21") from None


def normalize_phone_filter(value: str | None) -> str | None:
    """The list's `phone` filter as E.164; raises ValueError with the reason."""
    if value is None:
        return None
    # An unencoded `+` in a query string arrives as a space: `?phone=+1415...`.
    phone = value.strip()
    phone = phone if phone.startswith("+") else "+" + phone
    if not _E164.match(phone):
        raise ValueError("must be an E.164 number like +14155552671")
    return phone


MessageId = Annotated[
    uuid.UUID, BeforeValidator(_parse_uuid), WithJsonSchema({"type": "string", "format": "uuid"})
]
IsoTime = Annotated[
    datetime,
    PlainSerializer(clock.iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class FailedSms(ApiModel):
    id: uuid.UUID
    phone: str
    message: str
    error: str | None
    attempts: int
    created_at: IsoTime
    last_attempt_at: IsoTime | None
    reason: str
    status: RecordStatus
    message_sid: str | None
    resolved_at: IsoTime | None

    @classmethod
    def of(cls, record: FailedSmsRecord) -> FailedSms:
        internal = {"namespace", "shard", "dead_letter_id"}
        return cls.model_validate(record.model_dump(exclude=internal))


class Pagination(ApiModel):
    total: int
    limit: int
    offset: int
    has_more: bool


class ListResponse(ApiModel):
    success: Literal[True] = True
    data: list[FailedSms]
    pagination: Pagination


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: MessageId
    force: StrictBool = Field(False, description="Bypass the per-phone rate limit")


class RetryResponse(ApiModel):
    success: Literal[True] = True
    message: str = "SMS retry successful"
    message_sid: str


class DeleteResponse(ApiModel):
    success: Literal[True] = True
    message: str = "Failed SMS record deleted"


class ReplayRequest(BaseModel):
    """Either `ids`, or `reason` with an optional `limit` (oldest first)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["ids"],
                    "not": {"anyOf": [{"required": ["reason"]}, {"required": ["limit"]}]},
                },
                {"required": ["reason"], "not": {"required": ["ids"]}},
            ]
        },
    )

    # None means "left out": a JSON null is refused, so the documented schemas (which do not
    # allow null) are the truth.
    ids: Annotated[
        list[MessageId] | None,
        Field(min_length=1, max_length=MAX_REPLAY_IDS),
        WithJsonSchema(
            {
                "type": "array",
                "items": {"type": "string", "format": "uuid"},
                "minItems": 1,
                "maxItems": MAX_REPLAY_IDS,
            }
        ),
    ] = None
    reason: Annotated[
        DeadLetterReason | None, WithJsonSchema({"type": "string", "enum": REPLAYABLE_REASONS})
    ] = None
    limit: Annotated[
        int | None,
        Field(ge=1, le=MAX_REPLAY_LIMIT),
        WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_REPLAY_LIMIT}),
    ] = None

    @field_validator("ids", "reason", "limit", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null (leave it out instead)")
        if value == DeadLetterReason.INVALID_PAYLOAD.value:
            raise ValueError(
                "invalid_payload dead letters cannot be replayed: their entries "
                "do not parse; fix the publisher, then delete them"
            )
        return value

    @field_validator("limit", mode="before")
    @classmethod
    def _strict_limit(cls, value: Any) -> Any:
        # Lax pydantic takes true and "5" for 1 and 5: the document says integer, so only that
        # (5.0 is one too, for JSON Schema, and for the clients it generates).
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if value is not None and type(value) is not int:
            raise ValueError("must be a JSON integer")
        return value

    @field_validator("ids", mode="before")
    @classmethod
    def _strict_ids(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, list):
            raise ValueError("must be a JSON array of UUID strings")
        return value

    @model_validator(mode="after")
    def _one_selection(self) -> ReplayRequest:
        if (self.ids is None) == (self.reason is None):
            raise ValueError("give either 'ids' or 'reason' (with an optional 'limit')")
        if self.ids is not None and self.limit is not None:
            raise ValueError("'limit' goes with 'reason', not with 'ids'")
        return self


class ReplayResponse(ApiModel):
    success: Literal[True] = True
    queued: int = Field(description="Records marked replayed, now being put back on the stream")
    skipped: int = Field(0, description="Ids that are unknown, resolved, or invalid payloads")


class AuditRecord(ApiModel):
    """One change an admin made or tried: `GET /api/admin/audit`."""

    at: IsoTime
    actor: str = Field(description="The token's name; `admin`; or `cli:<os user>`")
    action: str = Field(description="retry, retry_forced, delete or replay")
    target: str = Field(description="A message id, ids joined by commas, or `reason:<reason>`")
    outcome: str = Field(
        description="ok, not_found, conflict, rate_limited, provider_error, invalid, "
        "unavailable, interrupted or error"
    )
    detail: str | None = Field(description="The message SID, the error, or what a replay queued")

    @classmethod
    def of(cls, entry: Any) -> AuditRecord:
        return cls(
            at=entry.at,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            outcome=entry.outcome,
            detail=entry.detail,
        )


class AuditListResponse(ApiModel):
    success: Literal[True] = True
    data: list[AuditRecord]
    pagination: Pagination


class ErrorResponse(ApiModel):
    success: Literal[False] = False
    error: str


class RateLimitedResponse(ErrorResponse):
    retry_after: int = Field(
        description="Seconds to wait: until the phone's rate-limit window "
        "reopens (retry), or until this client may authenticate "
        "again after too many failures"
    )


class HealthResponse(ApiModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(ApiModel):
    status: Literal["ready", "unavailable"]
    redis: str
    postgres: str


MessageStatus = Literal[
    "queued", "waiting", "sent", "delivered", "undelivered", "failed", "expired"
]


class TraceEvent(ApiModel):
    at: IsoTime
    event: str
    detail: str


class MessageTrace(ApiModel):
    id: uuid.UUID
    phone: str
    status: MessageStatus
    message_sid: str | None
    attempts: int
    reason: str | None
    events: list[TraceEvent]


class MessageResponse(ApiModel):
    success: Literal[True] = True
    data: MessageTrace


class MessageSummary(ApiModel):
    id: uuid.UUID
    phone: str
    status: MessageStatus
    message_sid: str | None
    at: IsoTime
    reason: str | None


class MessageListResponse(ApiModel):
    success: Literal[True] = True
    data: list[MessageSummary]
