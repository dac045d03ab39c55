"""The provider Protocol: send one SMS, or find one the provider may already have."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class SendReceipt:
    sid: str
    segments: int | None = None


class Provider(Protocol):
    async def send(self, to: str, body: str, *, message_id: str) -> SendReceipt:
        """Send one SMS; raise `smsrelay.errors.ProviderError` on failure."""
        ...

    async def find_sent(self, to: str, body: str, since: datetime) -> SendReceipt | None:
        """The message to `to` with this body the provider created since `since`, if any
        (after an attempt whose outcome is unknown); raise ProviderError when it cannot say."""
        ...

    async def aclose(self) -> None: ...
