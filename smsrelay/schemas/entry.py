"""The request stream entry, version 1: a wire format that services in any language may publish.

Every field is a flat string in the stream. `request_entry.schema.json` beside this file is
generated from `RequestEntry` (`smsrelay schema`) and kept equal to it by a test.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Json,
    ValidationError,
    field_validator,
)

from smsrelay import clock
from smsrelay.schemas.meta import (
    MAX_META_BYTES,
    MAX_META_DEPTH,
    bound_meta,
    check_meta,
    encode_meta,
)
from smsrelay.schemas.phone import (
    WIRE_E164_PATTERN,
    check_plain_e164,
    normalize_e164,
    strip_separators,
)

SCHEMA_VERSION = "1"
MAX_BODY_CHARS = 1600
# A message's lane: `high` (login codes) is read first, `bulk` (campaigns) gets what `normal`
# leaves and one slot in ten while it has a backlog (docs/design.md, rule 17).
Priority = Literal["high", "normal", "bulk"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "bulk")
MAX_TTL_SECONDS = 30 * 86_400
# C0 and C1 controls and DEL, but tab, line feed and carriage return: what a handset may show
# as garbage or act on (an ESC sequence), never text a person meant to send.
_CONTROLS = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
BODY_PATTERN = f"^[^{_CONTROLS}]*$"  # in the JSON Schema
_BODY_CONTROL = re.compile(f"[{_CONTROLS}]")
# What describe_errors escapes so that an error stays one line (str.splitlines splits on all).
_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _check_body(value: str) -> str:
    found = _BODY_CONTROL.search(value)
    if found is not None:
        raise ValueError(
            f"must not contain control characters (U+{ord(found.group()):04X} at "
            f"character {found.start()}): remove them; newlines and tabs are "
            "allowed"
        )
    return value


# A caller's number, as people write it: checked and normalised to E.164 by libphonenumber
# (with a clearer error than a regex mismatch).
Phone = Annotated[
    str,
    Field(
        min_length=2,
        max_length=32,
        description="Phone number in international format, e.g. +14155552671 or +1 (415) 555-2671",
    ),
    AfterValidator(normalize_e164),
]
# The wire's number: plain E.164 exactly, as the producer writes it, and valid. The pattern
# is published in the JSON Schema for other languages; the validator says what is wrong.
E164 = Annotated[
    str,
    Field(
        description="Plain E.164 phone number ('+' and 7-15 digits, "
        "nothing else), valid per libphonenumber, e.g. "
        "+14155552671",
        json_schema_extra={"pattern": WIRE_E164_PATTERN},
    ),
    AfterValidator(check_plain_e164),
]
Body = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_BODY_CHARS,
        description="The text to send, 1-1600 characters; no control "
        "characters but tab, line feed and carriage return",
        json_schema_extra={"pattern": BODY_PATTERN},
    ),
    AfterValidator(_check_body),
]
Kind = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="What the message is about, for logs and metrics",
    ),
]
IdempotencyKey = Annotated[
    str, Field(min_length=1, max_length=200, description="Same key within 24 h: no second SMS")
]
Meta = Annotated[dict[str, Any], BeforeValidator(bound_meta), AfterValidator(check_meta)]


class MessageRequest(BaseModel):
    """What a caller asks for: validated before anything is queued."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    to: Phone
    body: Body
    kind: Kind | None = None
    idempotency_key: IdempotencyKey | None = None
    meta: Meta | None = None
    priority: Priority = "normal"
    ttl_seconds: float | None = Field(
        None,
        gt=0,
        le=MAX_TTL_SECONDS,
        allow_inf_nan=False,
        description="Seconds from now after which the message is never sent",
    )

    @field_validator("to", mode="before")
    @classmethod
    def _strip_phone(cls, value: object) -> object:
        # "+1 (415) 555-2671" from a form: the length limit and the cache see the digits.
        if isinstance(value, str):
            return strip_separators(value.strip())
        return value


class RequestEntry(BaseModel):
    """One entry of `{ns:shard}:requests`, as parsed from (and written to) the stream."""

    model_config = ConfigDict(
        extra="ignore", frozen=True, json_schema_extra={"additionalProperties": {"type": "string"}}
    )

    v: Literal["1"] = Field(description="Schema version")
    id: uuid.UUID = Field(description="Message id (UUID), assigned at publish")
    to: E164
    body: Body
    created_at: datetime = Field(description="ISO 8601 UTC time of publish")
    kind: Kind | None = None
    idempotency_key: IdempotencyKey | None = None
    meta: Json[Meta] | None = Field(
        None,
        description=f"A JSON object, encoded as a string: at most {MAX_META_BYTES} "
        f"bytes as compact JSON, nested at most {MAX_META_DEPTH} levels",
    )
    expires_at: datetime | None = Field(
        None,
        description="ISO 8601 UTC time after which the message is never sent (dead letter "
        "`expired`); wins over SMSRELAY_MESSAGE_TTL_SECONDS",
    )
    priority: Priority | None = Field(
        None,
        description="The lane the producer chose: `high` entries are XADDed to "
        "{<namespace>:<shard>}:requests:high, `bulk` ones to ...:requests:bulk; absent or "
        "`normal` on ...:requests. The stream an entry is read from decides its lane.",
    )

    @property
    def message_id(self) -> str:
        return str(self.id)

    def expiry(self, ttl_seconds: float) -> datetime | None:
        """When the message stops being worth sending: its own `expires_at`, else `ttl_seconds`
        after it was published (0: never)."""
        if self.expires_at is not None:
            return self.expires_at
        return self.created_at + timedelta(seconds=ttl_seconds) if ttl_seconds > 0 else None

    def to_fields(self) -> dict[str, str]:
        return wire_fields(
            str(self.id),
            self.to,
            self.body,
            clock.iso(self.created_at),
            self.kind,
            self.idempotency_key,
            self.meta,
            expires_at=clock.iso(self.expires_at) if self.expires_at else None,
            priority=self.priority,
        )


def new_entry_fields(request: MessageRequest) -> dict[str, str]:
    """The stream fields of a new entry for a validated request: a fresh id, created now.

    A publish builds these directly; a RequestEntry built for it would validate the same
    values a second time (the phone number above all) or, unvalidated, still cost 10 µs.
    """
    now = clock.now()
    expires_at = None
    if request.ttl_seconds is not None:
        expires_at = clock.iso(now + timedelta(seconds=request.ttl_seconds))
    return wire_fields(
        str(uuid.uuid4()),
        request.to,
        request.body,
        clock.iso(now),
        request.kind,
        request.idempotency_key,
        request.meta,
        expires_at=expires_at,
        priority=request.priority,
    )


def wire_fields(
    message_id: str,
    to: str,
    body: str,
    created_at: str,
    kind: str | None,
    idempotency_key: str | None,
    meta: dict[str, Any] | None,
    *,
    expires_at: str | None = None,
    priority: str | None = None,
) -> dict[str, str]:
    fields = {
        "v": SCHEMA_VERSION,
        "id": message_id,
        "to": to,
        "body": body,
        "created_at": created_at,
    }
    if kind is not None:
        fields["kind"] = kind
    if idempotency_key is not None:
        fields["idempotency_key"] = idempotency_key
    if meta is not None:
        fields["meta"] = encode_meta(meta)
    if expires_at is not None:
        fields["expires_at"] = expires_at
    if priority is not None and priority != "normal":
        fields["priority"] = priority  # tells a spool, a replay, a move which lane it is on
    return fields


class InvalidEntry(ValueError):
    """A stream entry that cannot be parsed; `str()` says why, in one line."""


def decode_fields(raw: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[str, str]:
    """Stream fields as text; raises InvalidEntry on bytes that are not UTF-8."""
    fields: dict[str, str] = {}
    for key, value in raw.items():
        try:
            k = key.decode() if isinstance(key, bytes) else key
            fields[k] = value.decode() if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            raise InvalidEntry("field names and values must be UTF-8 text") from None
    return fields


def parse_entry(raw: Mapping[bytes, bytes] | Mapping[str, str]) -> RequestEntry:
    fields = decode_fields(raw)
    version = fields.get("v")
    if version != SCHEMA_VERSION:
        raise InvalidEntry(
            f"unknown schema version v={version!r} (this worker reads v=1)"
            if version is not None
            else "missing field 'v' (schema version)"
        )
    try:
        return RequestEntry.model_validate(fields)
    except ValidationError as exc:
        raise InvalidEntry(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """A ValidationError as one line: `to: not a valid phone number; body: ...`."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "input"
        message = str(error["msg"]).removeprefix("Value error, ")
        # pydantic quotes the offending character, which may be a newline: keep one line
        message = _LINE_BREAKING.sub(lambda m: f"\\u{ord(m.group()):04x}", message)
        if error["type"] == "missing":
            message = "missing"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def entry_json_schema() -> dict[str, Any]:
    schema = RequestEntry.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://smsrelay.dev/schemas/request-entry-v1.json"
    schema["title"] = "smsrelay request stream entry, v1"
    schema["description"] = (
        "Flat string fields of one entry of {<namespace>:<shard>}:requests. "
        "XADD them as field/value pairs."
    )
    return schema
