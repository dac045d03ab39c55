"""What every publisher shares: the result type, the two Protocols, and input validation.

`Producer`, `AsyncProducer` and the testing outboxes (`smsrelay.testing.outbox`) all validate
with `prepare` and answer with `PublishResult`, so an application's tests that swap a producer
for an outbox see the same statuses and the same errors for the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from smsrelay.errors import InvalidMessageError, PublishError
from smsrelay.schemas.entry import MessageRequest, Priority, describe_errors, new_entry_fields

Status = Literal["queued", "duplicate", "rejected", "spooled"]


@dataclass(frozen=True)
class PublishResult:
    status: Status
    message_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the message will be sent (or already was, for a duplicate)."""
        return self.status != "rejected"


class Publisher(Protocol):
    """What an application calls to send an SMS: `Producer`, or `SmsOutbox` in its tests."""

    def publish(
        self,
        to: str,
        body: str,
        *,
        kind: str | None = None,
        idempotency_key: str | None = None,
        meta: dict[str, Any] | None = None,
        strict: bool = False,
        priority: Priority = "normal",
        ttl_seconds: float | None = None,
    ) -> PublishResult: ...


class AsyncPublisher(Protocol):
    """The asyncio twin of `Publisher`: `AsyncProducer`, or `AsyncSmsOutbox` in tests."""

    async def publish(
        self,
        to: str,
        body: str,
        *,
        kind: str | None = None,
        idempotency_key: str | None = None,
        meta: dict[str, Any] | None = None,
        strict: bool = False,
        priority: Priority = "normal",
        ttl_seconds: float | None = None,
    ) -> PublishResult: ...


def prepare(
    to: str,
    body: str,
    kind: str | None,
    idempotency_key: str | None,
    meta: dict[str, Any] | None,
    priority: str = "normal",
    ttl_seconds: float | None = None,
) -> dict[str, str] | PublishResult:
    """The new entry's stream fields, or the rejection."""
    try:
        request = MessageRequest(
            to=to,
            body=body,
            kind=kind,
            idempotency_key=idempotency_key,
            meta=meta,
            priority=priority,  # a str from callers without types: checked here
            ttl_seconds=ttl_seconds,
        )
        return new_entry_fields(request)
    except ValidationError as exc:
        return PublishResult("rejected", error=describe_errors(exc))


def finish(result: PublishResult, strict: bool) -> PublishResult:
    """`result`, or with `strict=True` the exception a rejection stands for."""
    if strict and result.status == "rejected":
        error = result.error or "rejected"
        if result.message_id is None:
            raise InvalidMessageError(error)
        raise PublishError(error)
    return result


__all__ = ["AsyncPublisher", "PublishResult", "Publisher", "Status", "finish", "prepare"]
