"""Recording publishers for an application's tests: a Producer without Redis.

`SmsOutbox.publish(...)` takes what `Producer.publish(...)` takes, validates it with the same
code (a bad number is `rejected` with the same error; `strict=True` raises the same
exception), and records what would have gone on the request stream, in order. The same
`idempotency_key` twice gives `duplicate` with the first message's id, and no second record,
as the real producer does within 24 hours. `AsyncSmsOutbox` is the asyncio twin, for code
that takes an `AsyncProducer`; `outbox.aio` is one that records into the same list.

    def test_a_booking_confirms_by_sms(sms_outbox):
        book(publisher=sms_outbox, name="John", phone="+14155552671")
        [sms] = sms_outbox.messages
        assert sms.to == "+14155552671" and sms.kind == "booking"
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from smsrelay.producers.request import PublishResult, finish, prepare
from smsrelay.schemas.entry import Priority


@dataclass(frozen=True)
class OutboxMessage:
    """One published SMS as the request stream would carry it (`to` in E.164)."""

    message_id: str
    to: str
    body: str
    kind: str | None
    idempotency_key: str | None
    meta: dict[str, Any] | None
    created_at: str
    priority: Priority = "normal"
    expires_at: str | None = None  # from `ttl_seconds`


class SmsOutbox:
    """A `Publisher` that records instead of publishing. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[OutboxMessage] = []
        self._keys: dict[str, str] = {}
        self.aio = AsyncSmsOutbox(self)

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
    ) -> PublishResult:
        fields = prepare(to, body, kind, idempotency_key, meta, priority, ttl_seconds)
        if isinstance(fields, PublishResult):
            return finish(fields, strict)
        with self._lock:
            if idempotency_key:
                first = self._keys.get(idempotency_key)
                if first is not None:
                    return PublishResult("duplicate", message_id=first)
                self._keys[idempotency_key] = fields["id"]
            self._messages.append(_message(fields))
        return PublishResult("queued", message_id=fields["id"])

    @property
    def messages(self) -> list[OutboxMessage]:
        """What was published, oldest first (a copy)."""
        with self._lock:
            return list(self._messages)

    def messages_to(self, to: str) -> list[OutboxMessage]:
        """What was published to one number (E.164, as `.to` holds it)."""
        return [m for m in self.messages if m.to == to]

    def clear(self) -> None:
        """Forget every message and every idempotency key."""
        with self._lock:
            self._messages.clear()
            self._keys.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)


class AsyncSmsOutbox:
    """An `AsyncPublisher` that records into an `SmsOutbox` (its own, or the one given)."""

    def __init__(self, outbox: SmsOutbox | None = None) -> None:
        self.outbox = outbox if outbox is not None else SmsOutbox()

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
    ) -> PublishResult:
        return self.outbox.publish(
            to,
            body,
            kind=kind,
            idempotency_key=idempotency_key,
            meta=meta,
            strict=strict,
            priority=priority,
            ttl_seconds=ttl_seconds,
        )

    @property
    def messages(self) -> list[OutboxMessage]:
        return self.outbox.messages

    def messages_to(self, to: str) -> list[OutboxMessage]:
        return self.outbox.messages_to(to)

    def clear(self) -> None:
        self.outbox.clear()

    def __len__(self) -> int:
        return len(self.outbox)


def _message(fields: dict[str, str]) -> OutboxMessage:
    meta = fields.get("meta")
    return OutboxMessage(
        message_id=fields["id"],
        to=fields["to"],
        body=fields["body"],
        kind=fields.get("kind"),
        idempotency_key=fields.get("idempotency_key"),
        meta=json.loads(meta) if meta else None,
        created_at=fields["created_at"],
        priority=fields.get("priority", "normal"),  # type: ignore[arg-type]
        expires_at=fields.get("expires_at"),
    )


__all__ = ["AsyncSmsOutbox", "OutboxMessage", "SmsOutbox"]
