"""One provider attempt outside the stream, for the admin's "retry now".

It is the worker's send path with a token instead of a stream entry (rule 13): begin.lua
claims the message, counts the attempt and takes the rate-limit slot (unless forced);
sent.lua writes the marker (and the outcome the mirror resolves the record with); a refusal
gives the message back through release.lua. So a worker, a replay and two admins sending one
message id exclude each other through the message's one state: whoever begins second finds
it busy, or sent.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from smsrelay import clock
from smsrelay.consumers.providers.base import Provider, SendReceipt
from smsrelay.errors import ConflictError, ProviderError, RateLimitedError
from smsrelay.outage import Outages, until_done
from smsrelay.settings import Settings
from smsrelay.streams.keys import shard_of
from smsrelay.streams.queue import BeginCall, Queue, Sender
from smsrelay.streams.wire import sent_outcome

# A direct sender that dies mid-send holds the message until its lease runs out: the provider
# call's own bound, plus room to write the outcome.
LEASE_MARGIN_S = 5.0


@dataclass(frozen=True)
class DirectResult:
    receipt: SendReceipt
    sent_now: bool  # False: the message had already been sent (its sent marker existed)


class DirectSender:
    def __init__(
        self, queue: Queue, settings: Settings, provider: Provider, outages: Outages
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.provider = provider
        self.outages = outages
        self._lease_ms = int((settings.twilio_timeout_seconds + LEASE_MARGIN_S) * 1000)

    async def send(
        self,
        message_id: str,
        phone: str,
        body: str,
        *,
        force: bool = False,
        resolves: str | None = None,
        resend_of: str = "",
    ) -> DirectResult:
        """Send once, as the message's sole sender. `resolves`: the failed_sms record's
        dead-letter id, carried in the outcome the mirror reads. `resend_of`: the SID of a
        send the provider reported undelivered: a new SMS goes out despite its marker.

        Raises ConflictError when another sender holds the message, RateLimitedError when
        the phone's window is full (and not forced), ProviderError when the provider refuses.
        """
        shard = shard_of(phone, self.settings.shards)
        sender = Sender(f"direct:{secrets.token_hex(8)}", self._lease_ms)
        # An admin decides to try again: the worker's attempt cap does not apply (0).
        decision = await self.queue.begin(
            BeginCall(
                shard,
                sender,
                message_id,
                phone,
                check_rate=not force,
                max_attempts=0,
                label="admin_retry",
                resend_of=resend_of,
            )
        )
        if decision.verdict == "sent":
            return DirectResult(SendReceipt(sid=decision.sid), sent_now=False)
        if decision.verdict == "busy":
            raise ConflictError(
                "this message is being sent right now (a worker, a replay or "
                "another admin); its record shows the outcome soon"
            )
        if decision.verdict == "limited":
            raise RateLimitedError(decision.wait_ms / 1000)
        try:
            receipt = await self.provider.send(phone, body, message_id=message_id)
        except ProviderError as exc:
            error = str(exc)
            # (DEL and ZREM free memory: their success does not prove that Redis takes writes)
            await until_done(
                lambda: self.queue.release(shard, sender, message_id, phone, error),
                self.outages,
                wrote=lambda _: False,
            )
            raise
        # The provider has the message: the marker must be written whatever Redis does now,
        # or a later retry or replay would send it again (rule 4).
        outcome = sent_outcome(
            message_id,
            phone=phone,
            sid=receipt.sid,
            attempts=1,
            replay_of=resolves or "",
            sent_at=clock.now_iso(),
        )
        await until_done(
            lambda: self.queue.mark_sent(shard, None, message_id, receipt.sid, outcome),
            self.outages,
        )
        return DirectResult(receipt, sent_now=True)
