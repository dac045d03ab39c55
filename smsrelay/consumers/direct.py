"""One provider attempt outside the stream, for the admin's "retry now".

It goes through the same pieces as the worker: the rate-limit script (unless forced), the
provider with its error table, and the sent marker, so a message sent here is never sent again
by a worker that meets it later (a replayed copy, a redelivery).
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

from smsrelay.consumers.outage import OutageLog, until_done
from smsrelay.consumers.providers.base import Provider, SendReceipt
from smsrelay.errors import ConflictError, ProviderError, RateLimitedError
from smsrelay.keys import ShardKeys, shard_of
from smsrelay.lua import Scripts
from smsrelay.redis_conn import text
from smsrelay.settings import Settings

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class DirectSender:
    def __init__(self, client: aioredis.Redis, settings: Settings, provider: Provider) -> None:
        self.redis = client
        self.settings = settings
        self.provider = provider
        self.scripts = Scripts(client)
        self._release = client.register_script(_RELEASE_LOCK)
        self._outage = OutageLog("redis")

    def keys_for(self, phone: str) -> ShardKeys:
        return ShardKeys(self.settings.namespace, shard_of(phone, self.settings.shards))

    async def already_sent(self, message_id: str, phone: str) -> str | None:
        sid = await self.redis.get(self.keys_for(phone).sent(message_id))
        return text(sid) or None

    async def send(self, message_id: str, phone: str, body: str, *,
                   force: bool = False) -> tuple[SendReceipt, bool]:
        """Send once. Returns (receipt, sent_now); sent_now is False when a marker existed.

        Raises ConflictError when another retry of this message is in progress,
        RateLimitedError when the phone's window is full (and not forced), ProviderError.
        """
        keys = self.keys_for(phone)
        token = secrets.token_hex(8)
        lock_ms = int((self.settings.twilio_timeout_seconds + 5) * 1000)
        if not await self.redis.set(keys.send_lock(message_id), token, nx=True, px=lock_ms):
            raise ConflictError("a retry of this message is already in progress")
        try:
            existing = await self.redis.get(keys.sent(message_id))
            if existing:
                return SendReceipt(sid=text(existing)), False
            if not force:
                allowed, wait_ms = await self.scripts.ratelimit(
                    keys=[keys.rate_limit(phone)],
                    args=[message_id, self.settings.rate_limit_max,
                          int(self.settings.rate_limit_window_seconds * 1000)])
                if not int(allowed):
                    raise RateLimitedError(int(wait_ms) / 1000)
            try:
                receipt = await self.provider.send(phone, body, message_id=message_id)
            except ProviderError:
                if not force:  # never accepted: give the slot back, as the worker does
                    await self.redis.zrem(keys.rate_limit(phone), message_id)
                raise
            # The provider has the message: the marker must be written whatever Redis does now,
            # or a later retry or replay would send it again (rule 4).
            await until_done(lambda: self.redis.set(keys.sent(message_id), receipt.sid,
                                                    ex=self.settings.sent_marker_ttl_seconds),
                             self._outage)
            return receipt, True
        finally:
            await self._release(keys=[keys.send_lock(message_id)], args=[token])
