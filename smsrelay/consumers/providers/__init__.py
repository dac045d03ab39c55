"""SMS providers behind one Protocol; Twilio is the one we ship."""

from __future__ import annotations

from smsrelay.consumers.providers.base import Provider, SendReceipt

__all__ = ["Provider", "SendReceipt"]
