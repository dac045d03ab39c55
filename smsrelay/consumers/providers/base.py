"""The provider Protocol: one call that sends one SMS or raises ProviderError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SendReceipt:
    sid: str
    segments: int | None = None


class Provider(Protocol):
    async def send(self, to: str, body: str, *, message_id: str) -> SendReceipt:
        """Send one SMS; raise `smsrelay.errors.ProviderError` (retryable or not) on failure."""
        ...

    async def aclose(self) -> None: ...
