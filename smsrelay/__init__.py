"""smsrelay: an SMS delivery pipeline on Redis Streams.

from smsrelay import Producer
result = Producer.from_env().publish(to="+14155552671", body="Your booking is confirmed")

`pip install smsrelay` is this producer alone; the worker and the admin service are the
extras `smsrelay[worker]` and `smsrelay[admin]`. Importing smsrelay loads neither.

The names below load on first use (PEP 562): `import smsrelay` alone imports nothing else,
because the package's pytest plugin (smsrelay.testing.pytest_plugin) loads in every pytest run
of an environment where smsrelay is installed, before a coverage tool starts measuring.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smsrelay.errors import ConfigError, InvalidMessageError, PublishError, SmsRelayError
    from smsrelay.producers.publish import AsyncProducer, Producer, PublishResult
    from smsrelay.producers.request import AsyncPublisher, Publisher
    from smsrelay.settings import Settings

__version__ = "0.1.0"

_EXPORTS = {
    "AsyncProducer": "smsrelay.producers.publish",
    "AsyncPublisher": "smsrelay.producers.request",
    "ConfigError": "smsrelay.errors",
    "InvalidMessageError": "smsrelay.errors",
    "Producer": "smsrelay.producers.publish",
    "PublishError": "smsrelay.errors",
    "PublishResult": "smsrelay.producers.publish",
    "Publisher": "smsrelay.producers.request",
    "Settings": "smsrelay.settings",
    "SmsRelayError": "smsrelay.errors",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'smsrelay' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
