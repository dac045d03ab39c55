"""smsrelay: an SMS delivery pipeline on Redis Streams.

from smsrelay import Producer
result = Producer.from_env().publish(to="+14155552671", body="Your booking is confirmed")
"""

from __future__ import annotations

from smsrelay.errors import ConfigError, InvalidMessageError, PublishError, SmsRelayError
from smsrelay.producers.publish import AsyncProducer, Producer, PublishResult
from smsrelay.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AsyncProducer",
    "ConfigError",
    "InvalidMessageError",
    "Producer",
    "PublishError",
    "PublishResult",
    "Settings",
    "SmsRelayError",
    "__version__",
]
