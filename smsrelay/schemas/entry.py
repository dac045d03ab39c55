"""The request stream entry, version 1: a wire format that services in any language may publish.

Every field is a flat string in the stream. `request_entry.schema.json` beside this file is
generated from `RequestEntry` (`smsrelay schema`) and kept equal to it by a test.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Json,
    ValidationError,
    field_validator,
)

from smsrelay import clock
from smsrelay.schemas.phone import normalize_e164

SCHEMA_VERSION = "1"
MAX_BODY_CHARS = 1600
MAX_META_BYTES = 4096
MAX_META_DEPTH = 32  # well inside the JSON parsers' recursion limits (pydantic's is 200)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The pattern is published in the JSON Schema for other languages; here libphonenumber decides,
# with a clearer error than a regex mismatch.
Phone = Annotated[str, Field(min_length=2, max_length=32,
                             description="E.164 phone number, e.g. +14155552671",
                             json_schema_extra={"pattern": r"^\+[1-9][0-9]{6,14}$"}),
                  AfterValidator(normalize_e164)]
Body = Annotated[str, Field(min_length=1, max_length=MAX_BODY_CHARS,
                            description="The text to send, 1-1600 characters")]
Kind = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                            description="What the message is about, for logs and metrics")]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200,
                                      description="Same key within 24 h: no second SMS")]


def _depth(value: Any) -> int:
    """How deep containers nest in `value` (iterative: a hostile value cannot recurse)."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_META_DEPTH:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _check_meta(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if _depth(value) > MAX_META_DEPTH:
        raise ValueError(f"meta must nest at most {MAX_META_DEPTH} levels deep")
    try:
        # Strict JSON (no NaN/Infinity): services in any language read this field.
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must hold only JSON values ({exc})") from None
    if len(encoded) > MAX_META_BYTES:
        raise ValueError(f"meta must encode to at most {MAX_META_BYTES} bytes of JSON")
    return value


class MessageRequest(BaseModel):
    """What a caller asks for: validated before anything is queued."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    to: Phone
    body: Body
    kind: Kind | None = None
    idempotency_key: IdempotencyKey | None = None
    meta: Annotated[dict[str, Any] | None, AfterValidator(_check_meta)] = None

    @field_validator("to", mode="before")
    @classmethod
    def _strip_phone(cls, value: object) -> object:
        # Accept "+1 (415) 555-2671" from forms; the pattern then sees the E.164 digits.
        if isinstance(value, str):
            return "".join(ch for ch in value if ch not in " ()-.\t")
        return value


class RequestEntry(BaseModel):
    """One entry of `{ns:shard}:requests`, as parsed from (and written to) the stream."""

    model_config = ConfigDict(extra="ignore", frozen=True,
                              json_schema_extra={"additionalProperties": {"type": "string"}})

    v: Literal["1"] = Field(description="Schema version")
    id: uuid.UUID = Field(description="Message id (UUID), assigned at publish")
    to: Phone
    body: Body
    created_at: datetime = Field(description="ISO 8601 UTC time of publish")
    kind: Kind | None = None
    idempotency_key: IdempotencyKey | None = None
    meta: Json[Annotated[dict[str, Any], AfterValidator(_check_meta)]] | None = Field(
        None, description="A JSON object, encoded as a string")

    @property
    def message_id(self) -> str:
        return str(self.id)

    def to_fields(self) -> dict[str, str]:
        return wire_fields(str(self.id), self.to, self.body, clock.iso(self.created_at),
                           self.kind, self.idempotency_key, self.meta)


def new_entry_fields(request: MessageRequest) -> dict[str, str]:
    """The stream fields of a new entry for a validated request: a fresh id, created now.

    A publish builds these directly; a RequestEntry built for it would validate the same
    values a second time (the phone number above all) or, unvalidated, still cost 10 µs.
    """
    return wire_fields(str(uuid.uuid4()), request.to, request.body, clock.now_iso(),
                       request.kind, request.idempotency_key, request.meta)


def wire_fields(message_id: str, to: str, body: str, created_at: str, kind: str | None,
                idempotency_key: str | None, meta: dict[str, Any] | None) -> dict[str, str]:
    fields = {"v": SCHEMA_VERSION, "id": message_id, "to": to, "body": body,
              "created_at": created_at}
    if kind is not None:
        fields["kind"] = kind
    if idempotency_key is not None:
        fields["idempotency_key"] = idempotency_key
    if meta is not None:
        fields["meta"] = json.dumps(meta, separators=(",", ":"))
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
        raise InvalidEntry(f"unknown schema version v={version!r} (this worker reads v=1)"
                           if version is not None else "missing field 'v' (schema version)")
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
        message = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", message)
        if error["type"] == "missing":
            message = "missing"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def entry_json_schema() -> dict[str, Any]:
    schema = RequestEntry.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://smsrelay.dev/schemas/request-entry-v1.json"
    schema["title"] = "smsrelay request stream entry, v1"
    schema["description"] = ("Flat string fields of one entry of {<namespace>:<shard>}:requests. "
                             "XADD them as field/value pairs.")
    return schema
