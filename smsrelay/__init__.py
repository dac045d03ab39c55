"""smsrelay: an SMS delivery pipeline on Redis Streams.

from smsrelay import Producer
result = Producer.from_env().publish(to="+14155552671", body="Your booking is confirmed")

`pip install smsrelay` is this producer alone; the worker and the admin service are the
extras `smsrelay[worker]` and `smsrelay[admin]`. Importing smsrelay loads neither.
"""

from __future__ import annotations

from smsrelay.errors import ConfigError, InvalidMessageError, PublishError, SmsRelayError
from smsrelay.producers.publish import AsyncProducer, Producer, PublishResult
from smsrelay.producers.request import AsyncPublisher, Publisher
from smsrelay.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AsyncProducer",
    "AsyncPublisher",
    "ConfigError",
    "InvalidMessageError",
    "Producer",
    "PublishError",
    "PublishResult",
    "Publisher",
    "Settings",
    "SmsRelayError",
    "__version__",
]
