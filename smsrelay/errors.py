"""One base error and a family per area, so callers can catch at the depth they care about."""

from __future__ import annotations


class SmsRelayError(Exception):
    """Base of every error smsrelay raises on purpose."""


class ConfigError(SmsRelayError):
    """A setting is missing or wrong; the message names the variable in one line."""


class PublishError(SmsRelayError):
    """`publish(strict=True)` could not queue the message."""


class InvalidMessageError(PublishError):
    """The message itself is invalid (bad phone number, empty body, ...)."""


class StorageError(SmsRelayError):
    """Redis or Postgres could not be reached or refused the operation."""


class ProviderError(SmsRelayError):
    """The SMS provider refused or failed a send (classified by consumers/providers/classify)."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        status: int | None = None,
        retryable: bool,
        systemic: bool = False,
        ambiguous: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.retryable = retryable
        self.systemic = systemic  # the provider or the account is unwell, not this message
        self.ambiguous = ambiguous  # the provider may have processed the request
        self.retry_after_s = retry_after_s  # the provider's Retry-After, when it said one


class NotFoundError(SmsRelayError):
    """An admin operation named a record that does not exist."""


class ConflictError(SmsRelayError):
    """An admin operation conflicts with the record's state (e.g. already resolved)."""


class RateLimitedError(SmsRelayError):
    """The per-phone window is full; `retry_after_s` says when it reopens."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"Rate limit exceeded; retry after {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s
