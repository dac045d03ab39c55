"""Who calls the admin API: bearer tokens matched in constant time, failed attempts counted.

`TokenTable.identify` finds the credential of an Authorization header. `FailedAuth` counts the
failures of each client address: it logs them (one line per client per period, with a count;
never a token, only its length) and, after `MAX_FAILURES` in `WINDOW_SECONDS`, refuses that
client for `COOLDOWN_SECONDS`. The client is the peer address of the connection (the ASGI
scope's `client`); X-Forwarded-For is not trusted, since any caller can write it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smsrelay.logging import get_logger
from smsrelay.settings import AdminCredential, Role

log = get_logger("smsrelay.admin")

MAX_FAILURES = 10
WINDOW_SECONDS = 60.0
COOLDOWN_SECONDS = 60.0
LOG_PERIOD_SECONDS = 60.0
# ~200 bytes a client: a few MB at most, whatever a hostile client sends.
MAX_CLIENTS = 10_000
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Identity:
    """The caller as routes see it: `request.state.actor` and `request.state.role`."""

    name: str
    role: Role


class TokenTable:
    """The configured tokens, kept only as keyed digests."""

    def __init__(self, credentials: Sequence[AdminCredential]) -> None:
        self._key = secrets.token_bytes(32)  # per process: the digests mean nothing elsewhere
        self._entries = [
            (self._digest(c.token.get_secret_value().encode()), Identity(c.name, c.role))
            for c in credentials
        ]

    def _digest(self, token: bytes) -> bytes:
        return hmac.new(self._key, token, hashlib.sha256).digest()

    def identify(self, header: bytes) -> Identity | None:
        """The identity of `Authorization: Bearer <token>` (the word Bearer in any case)."""
        scheme, _, given = header.partition(b" ")
        candidate = self._digest(given.strip() if scheme.lower() == b"bearer" else b"")
        # Digests all have one length, so a comparison's time tells nothing of the token's
        # length; and every token is compared, so the total tells nothing of which matched.
        matches = [hmac.compare_digest(candidate, expected) for expected, _ in self._entries]
        return next(
            (identity for ok, (_, identity) in zip(matches, self._entries, strict=True) if ok), None
        )


def credential_length(header: bytes) -> int:
    """What a failure log line says of the credential: its length, never its value."""
    scheme, _, given = header.partition(b" ")
    return len(given.strip()) if scheme.lower() == b"bearer" else len(header)


def client_key(host: str | None) -> str:
    """The key failures are counted under: the address, or its /64 for IPv6.

    One IPv6 host commonly holds a whole /64; counted address by address it would never be
    slowed down.
    """
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # not an IP (a Unix socket, a test transport): bounded all the same
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(slots=True)
class _Client:
    window_start: float
    failures: int = 0  # in the current window
    blocked_until: float = 0.0
    logged_at: float = -math.inf
    unlogged: int = 0  # failures since the last log line


class FailedAuth:
    """Failed authentications per client: logged, rate-limited, in a bounded table.

    `max_failures=0` only logs: no client is ever refused.

    The table keeps at most `max_clients` clients, the least recently failing one dropped
    first: a client with many addresses can push others out, but each of its addresses is
    still refused after `max_failures` guesses.
    """

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window_s: float = WINDOW_SECONDS,
        cooldown_s: float = COOLDOWN_SECONDS,
        log_period_s: float = LOG_PERIOD_SECONDS,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.log_period_s = log_period_s
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def blocked(self, key: str) -> int | None:
        """Seconds (rounded up) until `key` may try again, or None if it may now."""
        client = self._clients.get(key)
        if client is None or not client.blocked_until:
            return None
        left = client.blocked_until - self._clock()
        if left > 0:
            return max(1, math.ceil(left))
        # The cool-down is over: a fresh start.
        client.blocked_until = 0.0
        client.failures = 0
        client.window_start = self._clock()
        return None

    def failed(self, key: str, credential_length: int) -> int | None:
        """Count one failure of `key`; the seconds it is now refused for, or None."""
        now = self._clock()
        client = self._clients.get(key)
        if client is None:
            while len(self._clients) >= self.max_clients:
                self._clients.popitem(last=False)
            client = self._clients[key] = _Client(window_start=now)
        else:
            self._clients.move_to_end(key)
            if now - client.window_start > self.window_s:
                client.window_start, client.failures = now, 0
        client.failures += 1
        client.unlogged += 1
        if now - client.logged_at >= self.log_period_s:
            log.warning(
                "admin.auth_failed",
                client=key,
                failures=client.unlogged,
                token_length=credential_length,
                since_s=None if client.logged_at == -math.inf else round(now - client.logged_at),
            )
            client.logged_at, client.unlogged = now, 0
        if not self.max_failures or client.failures < self.max_failures:
            return None
        client.blocked_until = now + self.cooldown_s
        log.warning(
            "admin.auth_blocked",
            client=key,
            failures=client.failures,
            window_s=self.window_s,
            retry_after_s=self.cooldown_s,
        )
        return max(1, math.ceil(self.cooldown_s))
